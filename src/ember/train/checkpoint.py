"""Atomic training checkpoints, metrics JSONL and the loss plot, used by train/loop.py.

    ember train gpt --config configs/gpt-tiny.yaml --resume     # continues from out/checkpoints/latest

Layout of `out/checkpoints/step-00000050/`:
  model.safetensors   full (unsharded) weights
  trainer.pt          {"optimizer", "scheduler", "rng"}: tensors, numbers and strings only, read back with
                      torch.load(weights_only=True), so loading never unpickles arbitrary objects
  state.json          step, data position, settings (+ what the task adds)
A checkpoint is written into a temporary folder, fsynced, then renamed into place, and `latest` is
replaced atomically afterwards: a SIGKILL at any moment leaves either the old or the new checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from ember.train import distributed


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded CPU weights (a collective under FSDP: every rank calls it; rank 0 gets the tensors)."""
    if distributed.is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(model, options=_options())
    return distributed.unwrap(model).state_dict()


def _full_optim_state(model, opt) -> dict:
    if distributed.is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(model, opt, options=_options())
    return opt.state_dict()


def _fsync_dir(path: Path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path):
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _gather_rng(info) -> list[torch.Tensor]:
    state = torch.get_rng_state()
    if not info.enabled or dist.get_backend() != "gloo":
        return [state]  # under nccl each rank's CPU RNG only drives dropout; rank 0's is kept
    states = [torch.empty_like(state) for _ in range(info.world_size)]
    dist.all_gather(states, state)
    return states


def save(out: Path, step: int, model, opt, sched, state: dict, info, *, keep: int = 2) -> Path:
    """Write checkpoint `step` atomically (rank 0 writes; all ranks take part in gathering)."""
    weights = full_model_state(model)
    optim = _full_optim_state(model, opt)
    rng = _gather_rng(info)
    root = Path(out) / "checkpoints"
    final = root / f"step-{step:08d}"
    if info.is_main:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        # Clone: tied weights share storage, which safetensors refuses; each key gets its own tensor.
        save_file({k: v.detach().to("cpu").clone().contiguous() for k, v in weights.items()},
                  str(tmp / "model.safetensors"))
        trainer = {"optimizer": optim, "scheduler": sched.state_dict(), "rng": {"cpu": rng}}
        if torch.cuda.is_available():
            trainer["rng"]["cuda"] = torch.cuda.get_rng_state()
        torch.save(trainer, tmp / "trainer.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        for f in tmp.iterdir():
            _fsync_file(f)
        _fsync_dir(tmp)
        if final.exists():  # a stale copy from a run that was resumed from an earlier step
            trash = root / f".old-{final.name}-{os.getpid()}"
            os.rename(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(tmp, final)
        _fsync_dir(root)
        pointer = root / f".latest-{os.getpid()}"
        pointer.write_text(final.name)
        _fsync_file(pointer)
        os.replace(pointer, root / "latest")
        _fsync_dir(root)
        _prune(root, keep, final)
    distributed.barrier()
    return final


def _prune(root: Path, keep: int, current: Path):
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    for p in done[:-keep] if keep > 0 else []:
        if p != current:
            shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".tmp-step-*"):  # leftovers of a run killed while writing
        if p.name.endswith(f"-{os.getpid()}"):
            continue
        shutil.rmtree(p, ignore_errors=True)


def latest(out: Path) -> Path | None:
    """The newest complete checkpoint under `out/checkpoints`, or None."""
    root = Path(out) / "checkpoints"
    pointer = root / "latest"
    if pointer.is_file():
        cand = root / pointer.read_text().strip()
        if (cand / "state.json").is_file():
            return cand
    done = sorted(p for p in root.glob("step-*") if (p / "state.json").is_file())
    return done[-1] if done else None


def load(folder: Path, model, opt, sched, batches, info) -> dict:
    """Restore model, optimizer, scheduler, RNG and data position from `folder`; returns state.json."""
    state = json.loads((folder / "state.json").read_text())
    weights = load_file(str(folder / "model.safetensors"))
    trainer = torch.load(folder / "trainer.pt", weights_only=True, map_location="cpu")
    if distributed.is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        set_model_state_dict(model, weights, options=_options(strict=True))
        set_optimizer_state_dict(model, opt, trainer["optimizer"], options=_options())
    else:
        distributed.unwrap(model).load_state_dict(weights)
        opt.load_state_dict(trainer["optimizer"])
    sched.load_state_dict(trainer["scheduler"])
    rng = trainer["rng"]["cpu"]
    if len(rng) == info.world_size:
        torch.set_rng_state(rng[info.rank])
    if "cuda" in trainer["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(trainer["rng"]["cuda"])
    batches.load_state_dict(state["data"])
    return state


class MetricsLog:
    """Append-only JSONL of metrics; on resume, records after the checkpoint's step are dropped."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled, self.fh = Path(path), enabled, None

    def open(self, keep_up_to: int):
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if keep_up_to > 0 and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
                if rec.get("step", 0) <= keep_up_to:
                    kept.append(line)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(k + "\n" for k in kept))
        os.replace(tmp, self.path)
        self.fh = open(self.path, "a")

    def write(self, rec: dict):
        if self.fh:
            self.fh.write(json.dumps(rec) + "\n")
            self.fh.flush()

    def close(self):
        if self.fh:
            self.fh.close()
            self.fh = None


def read_metrics(path: Path) -> list[dict]:
    recs = []
    for line in Path(path).read_text().splitlines():
        try:
            recs.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return recs


def plot_losses(metrics: Path, png: Path):
    """Training (and validation) loss against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_metrics(metrics) if Path(metrics).is_file() else []
    train = [(r["step"], r["loss"]) for r in recs if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in recs if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = png.with_name(png.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png)


def save_hf(model: torch.nn.Module, folder: Path, info, tokenizer=None) -> Path | None:
    """Write the trained model (+ tokenizer) as a plain Hugging Face folder; rank 0 writes."""
    weights = full_model_state(model)
    if info.is_main:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        inner = distributed.unwrap(model)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        fresh = type(inner)(inner.config)  # a plain (unsharded, unwrapped) copy to save from
        fresh.load_state_dict({k: v.to("cpu") for k, v in weights.items()})
        fresh.save_pretrained(str(folder))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(folder))
    distributed.barrier()
    return Path(folder) if info.is_main else None
