"""What `train gpt` and `train bert` share: checking inputs before training and registering the result.

    ember train gpt --config configs/gpt-tiny.yaml      # -> out/final/ (HF folder) -> registry name:N
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ember.errors import InvalidRequest
from ember.train import checkpoint as ckpt
from ember.train.data import Prepared
from ember.train.tokenizer import load_tokenizer


def check_inputs(cfg, world_size: int):
    """Load tokenizer + data and check they agree with each other and with the config (before any model)."""
    tokenizer, tok_ref = load_tokenizer(cfg.tokenizer)
    data = Prepared.open(cfg.data)
    vocab = len(tokenizer)
    if cfg.vocab_size is not None and cfg.vocab_size != vocab:
        raise InvalidRequest(f"config key 'vocab_size' is {cfg.vocab_size} but tokenizer '{cfg.tokenizer}' "
                             f"has {vocab} tokens", param="vocab_size")
    if data.manifest.get("vocab_size") != vocab:
        raise InvalidRequest(f"config key 'data': '{cfg.data}' was prepared with a tokenizer of "
                             f"{data.manifest.get('vocab_size')} tokens, but tokenizer '{cfg.tokenizer}' "
                             f"has {vocab}", param="data")
    per_step = world_size * cfg.grad_accum
    if cfg.batch_size % per_step:
        raise InvalidRequest(f"config key 'batch_size' ({cfg.batch_size}) must be divisible by "
                             f"processes x grad_accum ({world_size} x {cfg.grad_accum})", param="batch_size")
    return tokenizer, tok_ref, data


def parent_folder(ref: str | None):
    """(materialized folder, resolved ref) of the model to continue from, or (None, None)."""
    if not ref:
        return None, None
    from ember.store import registry

    version = registry.resolve(ref)
    return registry.materialize(version.ref), version.ref


def finish(cfg, model, tokenizer, tok_ref: str, data: Prepared, result, info, parent_ref: str | None,
           extra_lineage: dict | None = None) -> dict:
    """Save out/final as an HF folder, register it (rank 0) with lineage, write out/result.json."""
    folder = ckpt.save_hf(model, Path(cfg.out) / "final", info, tokenizer=tokenizer)
    summary = {"step": result.step, "final_loss": result.loss, "final_val_loss": result.val_loss,
               "final_val_ppl": result.val_ppl, "folder": str(folder) if folder else None, "ref": None,
               "rank": info.rank}
    if not info.is_main:
        return summary
    if cfg.register:
        from ember.store import registry

        lineage = {"tokenizer": tok_ref, "dataset_digest": data.digest, "config": asdict(cfg),
                   "final_val_loss": result.val_loss, "final_val_ppl": result.val_ppl,
                   "final_train_loss": result.loss, "steps": result.step, **(extra_lineage or {})}
        if parent_ref:
            lineage["parent"] = parent_ref
        version = registry.register_folder(folder, cfg.name, kind="model", metadata={"lineage": lineage},
                                           parent=parent_ref)
        summary["ref"] = version.ref
    out = Path(cfg.out) / "result.json"
    out.write_text(json.dumps(summary, indent=2, default=str))
    return summary

