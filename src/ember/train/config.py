"""Typed training configs: YAML file + `key=value` overrides -> a dataclass, checked before training.

    ember train gpt --config configs/gpt-tiny.yaml max_steps=50 lr=1e-3 out=runs/try2

Unknown keys, wrong types and missing required keys raise InvalidRequest naming the key, so a bad config
fails in the first second instead of after a model was built. Values of overrides are read as YAML
scalars (`true`, `3`, `0.1`, `null`) and then converted to the declared type (`1e-3` -> float).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from ember.errors import InvalidRequest, NotFound
from ember.train.loop import LoopSettings


@dataclass
class TrainConfig:
    """Keys shared by `train gpt` and `train bert` (the task configs add their architecture keys)."""

    data: str                           # prepared dataset folder (`ember data prepare --out`)
    tokenizer: str                      # registry reference (or a tokenizer folder)
    name: str                           # registry name of the trained model
    out: str                            # run folder: checkpoints, metrics.jsonl, loss.png, final/
    max_steps: int
    seed: int = 0
    batch_size: int = 16                # global sequences per optimizer step (all ranks, all micro-steps)
    seq_len: int = 128
    grad_accum: int = 1
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 0
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    clip: float = 1.0
    autocast: Literal["auto", "off", "bf16", "fp16"] = "auto"
    eval_every: int = 0
    eval_batches: int = 8
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 1
    resume: bool = False
    fsdp: bool = False
    progress: bool = True
    register: bool = True               # store the result in the registry as `name:N`
    parent: str | None = None           # registry ref of a model to continue training from
    vocab_size: int | None = None       # must equal the tokenizer's when given
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 512
    dropout: float = 0.0


def loop_settings(cfg: TrainConfig) -> LoopSettings:
    names = {f.name for f in fields(LoopSettings)}
    kw = {k: getattr(cfg, k) for k in names if hasattr(cfg, k)}
    kw["out"] = Path(cfg.out)
    return LoopSettings(**kw)


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise InvalidRequest(f"override '{item}' is not key=value", param=item)
    key, raw = item.split("=", 1)
    key = key.strip().lstrip("-").replace("-", "_")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _coerce(key: str, value: Any, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except InvalidRequest as e:
                errors.append(e)
        raise errors[0]
    if origin is Literal:
        allowed = typing.get_args(typ)
        if value not in allowed:
            raise InvalidRequest(f"config key '{key}' must be one of {list(allowed)}, got {value!r}", param=key)
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-3" as a string
            except ValueError:
                pass
    elif typ in (str, Path):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    name = getattr(typ, "__name__", str(typ))
    raise InvalidRequest(f"config key '{key}' must be {name}, got {type(value).__name__} {value!r}",
                         param=key)


def load_config(cls: type, path: str | Path | None, overrides: list[str] | None = None):
    """Build `cls` (a dataclass) from a YAML file and `key=value` overrides, validating every key."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise NotFound(f"config file '{p}' not found", param="config")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise InvalidRequest(f"config file '{p}' is not valid YAML: {e}", param="config") from None
        if not isinstance(raw, dict):
            raise InvalidRequest(f"config file '{p}' must be a mapping of keys to values", param="config")
    for item in overrides or []:
        k, v = _parse_override(item)
        raw[k] = v
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    for k in raw:
        if k not in known:
            close = difflib.get_close_matches(str(k), list(known), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise InvalidRequest(f"unknown config key '{k}'{hint}", param=str(k))
    values = {}
    for name, f in known.items():
        if name in raw:
            values[name] = _coerce(name, raw[name], hints[name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise InvalidRequest(f"config key '{name}' is required", param=name)
    cfg = cls(**values)
    for name in ("max_steps", "batch_size", "seq_len", "grad_accum", "log_every"):
        if hasattr(cfg, name) and getattr(cfg, name) < 1:
            raise InvalidRequest(f"config key '{name}' must be at least 1", param=name)
    for name in ("eval_every", "checkpoint_every", "warmup_steps", "keep_checkpoints"):
        if hasattr(cfg, name) and getattr(cfg, name) < 0:
            raise InvalidRequest(f"config key '{name}' must not be negative", param=name)
    if hasattr(cfg, "lr") and cfg.lr <= 0:
        raise InvalidRequest("config key 'lr' must be positive", param="lr")
    return cfg

