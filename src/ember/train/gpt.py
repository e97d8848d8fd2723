"""GPT pretraining: a Llama- or GPT-2-style causal LM (transformers classes) trained on prepared shards.

    ember train gpt --config configs/gpt-tiny.yaml [key=value ...]
    torchrun --nproc-per-node 2 -m ember train gpt --config configs/gpt-tiny.yaml [--fsdp]

The result is `out/final/` (a plain HF folder with the tokenizer) registered as `name:N` with lineage.
`batch_size` is the global batch per optimizer step, so the same config gives the same run (same batches,
same losses) on 1 process or N: each micro-batch is cut into N equal slices, one per rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ember.errors import InvalidRequest
from ember.train import common, distributed
from ember.train.config import TrainConfig, load_config, loop_settings
from ember.train.loop import train


@dataclass
class GPTConfig(TrainConfig):
    arch: Literal["llama", "gpt2"] = "llama"
    num_kv_heads: int | None = None     # grouped-query attention (llama); None = num_heads
    rope_theta: float = 10000.0
    tie_embeddings: bool = True


class TokenWindows:
    """Batches of (seq_len + 1)-token windows, reshuffled every epoch from `seed`; resumable by position.

    Micro-batch number p covers windows [p*G, (p+1)*G) of the epoch-concatenated permutation stream
    (G = global micro-batch); rank r takes the r-th slice. The position is just p.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, global_micro: int, seed: int, rank: int = 0,
                 world: int = 1, shuffle: bool = True):
        self.tokens, self.seq_len, self.seed, self.shuffle = tokens, seq_len, seed, shuffle
        self.n = (len(tokens) - 1) // seq_len
        if self.n < 1:
            raise InvalidRequest(f"config key 'seq_len' ({seq_len}) is longer than the data "
                                 f"({len(tokens)} tokens)", param="seq_len")
        self.per_rank = global_micro // world
        self.global_micro, self.rank = global_micro, rank
        self.pos = 0
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perms[epoch]

    def windows(self, pos: int) -> np.ndarray:
        first = pos * self.global_micro + self.rank * self.per_rank
        ks = np.arange(first, first + self.per_rank)
        idx = np.array([self._perm(int(k // self.n))[k % self.n] for k in ks])
        offs = idx[:, None] * self.seq_len + np.arange(self.seq_len + 1)[None, :]
        return np.asarray(self.tokens[offs], dtype=np.int64)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        x = torch.from_numpy(self.windows(self.pos))
        self.pos += 1
        return {"input_ids": x[:, :-1], "labels": x[:, 1:]}

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict):
        self.pos = int(state["pos"])


def val_batches_fn(tokens: np.ndarray, seq_len: int, global_micro: int, n_batches: int, info):
    """A fixed, unshuffled set of validation batches (this rank's slices), the same at every eval."""
    src = TokenWindows(tokens, seq_len, global_micro, 0, info.rank, info.world_size, shuffle=False)
    count = max(1, min(n_batches, src.n // global_micro))

    def batches():
        for p in range(count):
            x = torch.from_numpy(src.windows(p))
            yield {"input_ids": x[:, :-1], "labels": x[:, 1:]}
    return batches


def causal_lm_loss(model, batch: dict):
    logits = model(input_ids=batch["input_ids"]).logits
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), batch["labels"].reshape(-1))
    return loss, {}


def build_model(cfg: GPTConfig, tokenizer) -> torch.nn.Module:
    vocab = len(tokenizer)
    eos = tokenizer.eos_token_id
    if cfg.hidden_size % cfg.num_heads:
        raise InvalidRequest(f"config key 'hidden_size' ({cfg.hidden_size}) must be divisible by "
                             f"num_heads ({cfg.num_heads})", param="hidden_size")
    if cfg.arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        kv = cfg.num_kv_heads or cfg.num_heads
        if cfg.num_heads % kv:
            raise InvalidRequest("config key 'num_kv_heads' must divide num_heads", param="num_kv_heads")
        conf = LlamaConfig(vocab_size=vocab, hidden_size=cfg.hidden_size,
                           intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
                           num_attention_heads=cfg.num_heads, num_key_value_heads=kv,
                           max_position_embeddings=cfg.seq_len, rope_theta=cfg.rope_theta,
                           attention_dropout=cfg.dropout, tie_word_embeddings=cfg.tie_embeddings,
                           bos_token_id=eos, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
        return LlamaForCausalLM(conf)
    from transformers import GPT2Config, GPT2LMHeadModel

    conf = GPT2Config(vocab_size=vocab, n_positions=cfg.seq_len, n_embd=cfg.hidden_size,
                      n_layer=cfg.num_layers, n_head=cfg.num_heads, n_inner=cfg.intermediate_size,
                      resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
                      tie_word_embeddings=cfg.tie_embeddings, bos_token_id=eos, eos_token_id=eos,
                      pad_token_id=tokenizer.pad_token_id)
    return GPT2LMHeadModel(conf)


def run(cfg: GPTConfig) -> dict:
    """Train a GPT per `cfg` (inside or outside torchrun); returns the summary written to result.json."""
    info = distributed.setup()
    try:
        tokenizer, tok_ref, data = common.check_inputs(cfg, info.world_size)
        parent_dir, parent_ref = common.parent_folder(cfg.parent)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        if parent_dir is not None:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(str(parent_dir))
            if model.config.vocab_size != len(tokenizer):
                raise InvalidRequest(f"config key 'parent': '{cfg.parent}' has a vocabulary of "
                                     f"{model.config.vocab_size}, the tokenizer {len(tokenizer)}",
                                     param="parent")
        else:
            model = build_model(cfg, tokenizer)
        model = distributed.wrap(model, info, fsdp=cfg.fsdp)
        global_micro = cfg.batch_size // cfg.grad_accum
        batches = TokenWindows(data.tokens("train"), cfg.seq_len, global_micro, cfg.seed,
                               info.rank, info.world_size)
        val = val_batches_fn(data.tokens("val"), cfg.seq_len, global_micro, cfg.eval_batches, info)
        result = train(model, batches, causal_lm_loss, loop_settings(cfg), val_batches=val,
                       extra_state={"task": "gpt"})
        n_params = sum(p.numel() for p in distributed.unwrap(model).parameters())
        return common.finish(cfg, model, tokenizer, tok_ref, data, result, info, parent_ref,
                             extra_lineage={"parameters": n_params})
    finally:
        distributed.cleanup()


def main(config: str | None, overrides: list[str]) -> dict:
    return run(load_config(GPTConfig, config, overrides))
