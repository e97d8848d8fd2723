"""What every fine-tune shares: its settings, resumable example batches, and registering the result.

    ember finetune sft --base smollm2-135m-instruct --data train.jsonl --name my-sft
    torchrun --nproc-per-node 2 -m ember finetune classify --base minilm-l6-v2 --data d.jsonl --name clf

Each task (sft.py, classify.py, tag.py) turns its data into a list of examples (dicts of token id lists),
builds a transformers model, and trains it through the one training loop (`ember.train.loop.train`) with
the batches and the loss defined here; the result is registered with its lineage (base version, data
digests, full config, final eval loss).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ember.errors import InvalidRequest
from ember.train import distributed
from ember.train.loop import LoopSettings


@dataclass
class FinetuneConfig:
    base: str                         # registry reference of the model to start from
    data: str                         # training file (JSONL, or CoNLL for `tag`)
    name: str                         # registry name of the result
    eval_data: str | None = None      # held-out file in the same format; gives final_eval_loss
    out: str | None = None            # run folder (checkpoints, metrics.jsonl); default EMBER_HOME/runs/NAME
    epochs: float = 3.0
    max_steps: int = 0                # 0: as many as `epochs` takes
    batch_size: int = 8               # examples per optimizer step, over all ranks and micro-batches
    grad_accum: int = 1
    max_length: int = 512             # tokens per example; longer ones are cut (and reported)
    lr: float = 2e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 0
    weight_decay: float = 0.0
    clip: float = 1.0
    seed: int = 0
    eval_every: int = 0
    checkpoint_every: int = 0
    resume: bool = False
    progress: bool = True
    register: bool = True
    fsdp: bool = False
    # SFT only
    method: str = "lora"              # lora | full
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: str = "all-linear"  # or a comma-separated list, e.g. q_proj,v_proj

    def check(self) -> "FinetuneConfig":
        for key in ("batch_size", "grad_accum", "max_length", "rank"):
            if getattr(self, key) < 1:
                raise InvalidRequest(f"--{key.replace('_', '-')} must be at least 1", param=key)
        for key in ("max_steps", "warmup_steps", "eval_every", "checkpoint_every"):
            if getattr(self, key) < 0:
                raise InvalidRequest(f"--{key.replace('_', '-')} must not be negative", param=key)
        if self.lr <= 0 or self.epochs <= 0:
            raise InvalidRequest("--lr and --epochs must be positive", param="lr")
        if self.method not in ("lora", "full"):
            raise InvalidRequest(f"--method must be lora or full, got {self.method!r}", param="method")
        if not 0 <= self.dropout < 1:
            raise InvalidRequest("--dropout must be in [0, 1)", param="dropout")
        from ember.store.registry import check_name

        check_name(self.name)
        return self

    def run_dir(self) -> Path:
        if self.out:
            return Path(self.out).expanduser()
        from ember.config import get_settings

        return get_settings().home / "runs" / self.name


def loop_settings(cfg: FinetuneConfig, max_steps: int) -> LoopSettings:
    return LoopSettings(out=cfg.run_dir(), max_steps=max_steps, seed=cfg.seed, lr=cfg.lr,
                        min_lr_ratio=cfg.min_lr_ratio, warmup_steps=cfg.warmup_steps,
                        weight_decay=cfg.weight_decay, grad_accum=cfg.grad_accum, clip=cfg.clip,
                        eval_every=cfg.eval_every, checkpoint_every=cfg.checkpoint_every, resume=cfg.resume,
                        progress=cfg.progress, plot=False)


def plan_steps(cfg: FinetuneConfig, n_examples: int, world_size: int) -> int:
    """Optimizer steps for the run; checks that the batch splits evenly over ranks and micro-batches."""
    per_step = world_size * cfg.grad_accum
    if cfg.batch_size % per_step:
        raise InvalidRequest(f"--batch-size ({cfg.batch_size}) must be divisible by processes x grad_accum "
                             f"({world_size} x {cfg.grad_accum})", param="batch_size")
    return cfg.max_steps or max(1, math.ceil(cfg.epochs * n_examples / cfg.batch_size))


class ExampleBatches:
    """Micro-batches of examples, reshuffled every epoch from `seed`, resumable by position.

    Micro-batch p covers items [p*G, (p+1)*G) of the epoch-concatenated permutation stream (G = global
    micro-batch); rank r takes the r-th slice, so 1 process and N processes see the same batches.
    """

    def __init__(self, examples: list[dict], global_micro: int, collate: Callable[[list[dict]], dict],
                 seed: int, rank: int = 0, world: int = 1):
        if not examples:
            raise InvalidRequest("no training examples", param="data")
        self.examples, self.collate, self.seed = examples, collate, seed
        self.global_micro, self.rank, self.per_rank = global_micro, rank, global_micro // world
        self.pos = 0
        self._perm_epoch, self._perm = -1, None

    def _index(self, k: int) -> int:
        n = len(self.examples)
        epoch = k // n
        if epoch != self._perm_epoch:
            self._perm_epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(n)
        return int(self._perm[k % n])

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        first = self.pos * self.global_micro + self.rank * self.per_rank
        self.pos += 1
        return self.collate([self.examples[self._index(k)] for k in range(first, first + self.per_rank)])

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = int(state["pos"])


def val_batches_fn(examples: list[dict], micro: int, collate, info):
    """A fixed pass over this rank's share of the eval examples (None when there are none)."""
    if not examples:
        return None
    mine = examples[info.rank::info.world_size] or examples[:1]

    def batches():
        for i in range(0, len(mine), micro):
            yield collate(mine[i:i + micro])
    return batches


def pad_collate(pad_id: int) -> Callable[[list[dict]], dict]:
    """Right-pad `input_ids` (pad_id), `token_type_ids` (0, text pairs) and `labels` (-100) to the longest
    example; int labels (classes) and float labels (scores) stay scalars."""
    def collate(items: list[dict]) -> dict:
        width = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        types = torch.zeros((len(items), width), dtype=torch.long) if "token_type_ids" in items[0] else None
        for i, it in enumerate(items):
            n = len(it["input_ids"])
            ids[i, :n] = torch.tensor(it["input_ids"])
            mask[i, :n] = 1
            if types is not None:
                types[i, :n] = torch.tensor(it["token_type_ids"])
        batch = {"input_ids": ids, "attention_mask": mask}
        if types is not None:
            batch["token_type_ids"] = types
        if isinstance(items[0]["labels"], (int, float)):
            batch["labels"] = torch.tensor([it["labels"] for it in items])
        else:
            labels = torch.full((len(items), width), -100, dtype=torch.long)
            for i, it in enumerate(items):
                labels[i, :len(it["labels"])] = torch.tensor(it["labels"])
            batch["labels"] = labels
        return batch
    return collate


def tokens_of(batch: dict) -> int:
    return int(batch["attention_mask"].sum())


def base_folder(ref: str):
    """(materialized folder, version) of the base model."""
    from ember.store import registry

    version = registry.resolve(ref)
    return registry.materialize(version), version


def lineage(cfg: FinetuneConfig, task: str, base_ref: str, digests: dict, result, **extra) -> dict:
    return {"task": task, "base": base_ref, "data_digests": digests, "config": asdict(cfg),
            "final_eval_loss": result.val_loss, "final_train_loss": result.loss, "steps": result.step,
            "world_size": distributed.current().world_size,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}


def register(cfg: FinetuneConfig, folder: Path, *, kind: str, base_ref: str, lineage: dict,
             metadata: dict | None = None) -> str | None:
    """Register `folder` as the next version of cfg.name (rank 0 only); returns its reference."""
    if not cfg.register or not distributed.current().is_main:
        return None
    from ember.store import registry

    v = registry.register_folder(folder, cfg.name, kind=kind, parent=base_ref,
                                 metadata={**(metadata or {}), "lineage": lineage})
    return v.ref


def run_distributed(body: Callable[[distributed.DistInfo], dict]) -> dict:
    """Run a task body inside (or outside) torchrun: join the group, always leave it."""
    info = distributed.setup()
    try:
        return body(info)
    finally:
        distributed.cleanup()
