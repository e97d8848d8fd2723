"""The one training loop of Ember, shared by GPT/BERT pretraining and every fine-tuning task.

    ember train gpt --config configs/gpt-tiny.yaml        # train/gpt.py builds model + batches, calls train()

Interface (what a task supplies; everything else is here):

    result: TrainResult = train(
        model: torch.nn.Module,                  # already on its device and wrapped (distributed.wrap)
        batches: Batches,                        # next(batches) -> dict of tensors, this rank's micro-batch;
                                                 #   .state_dict() / .load_state_dict(d): the data position
        loss_fn: Callable[[nn.Module, dict], tuple[Tensor, dict[str, Tensor | float]]],
                                                 # (model, batch) -> (scalar loss, extra metrics to log)
        settings: LoopSettings,                  # optimizer, schedule, eval, checkpoint and output settings
        *,
        val_batches: Callable[[], Iterable[dict]] | None = None,   # a fresh pass over this rank's val share
        tokens_of: Callable[[dict], int] | None = None,            # tokens in a batch (default: input_ids)
        extra_state: dict | None = None,         # JSON-able facts stored in every checkpoint's state.json
    ) -> TrainResult

What it does: AdamW (no weight decay on biases/norms), linear warmup + cosine decay to `min_lr_ratio`,
gradient accumulation (no all-reduce on the non-final micro-batches), clipping, autocast (bf16 on CUDA;
off on CPU, where it is slower and breaks exact reproducibility), validation loss + perplexity every
`eval_every` steps and at the end, atomic checkpoints (`out/checkpoints/step-N/`: model.safetensors,
trainer.pt with optimizer + scheduler + every rank's RNG, state.json with step and data position) every
`checkpoint_every` steps and at the end, `resume`, a rich progress bar (loss, tokens/s, ETA),
`out/metrics.jsonl` and `out/loss.png`. Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol

import torch

from ember.train import checkpoint as ckpt, distributed


class Batches(Protocol):
    def __next__(self) -> dict: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class LoopSettings:
    out: Path
    max_steps: int
    seed: int = 0
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 0
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_accum: int = 1
    clip: float = 1.0                 # max gradient norm; 0 disables clipping
    autocast: str = "auto"            # auto | off | bf16 | fp16
    eval_every: int = 0               # 0: only at the end (when val_batches is given)
    checkpoint_every: int = 0         # 0: only at the end
    keep_checkpoints: int = 2
    log_every: int = 1
    resume: bool = False
    progress: bool = True
    plot: bool = True


@dataclass
class TrainResult:
    step: int
    loss: float | None                # training loss of the last step
    val_loss: float | None
    val_ppl: float | None
    out: Path
    checkpoint: Path | None
    history: list[dict] = field(default_factory=list)


def lr_factor(step: int, s: LoopSettings) -> float:
    """Multiplier of `lr` for optimizer update number `step` (0-based): linear warmup, cosine decay."""
    if step < s.warmup_steps:
        return (step + 1) / s.warmup_steps
    progress = min(1.0, (step - s.warmup_steps) / max(1, s.max_steps - s.warmup_steps))
    return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, s: LoopSettings) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=s.lr, betas=(s.beta1, s.beta2))


def autocast_dtype(device_type: str, mode: str, bf16_ok: bool) -> torch.dtype | None:
    """The autocast dtype for a mode (None: full precision). "auto" is bf16 on a GPU that has it and off on the
    CPU, so CPU runs stay fp32 and equal across process counts; an explicit bf16 or fp16 is honoured."""
    if mode == "off" or (mode == "auto" and device_type != "cuda"):
        return None
    if mode in ("auto", "bf16"):
        return torch.bfloat16 if (device_type != "cuda" or bf16_ok) else None
    return torch.float16


def autocast_context(device: torch.device, mode: str):
    bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
    dtype = autocast_dtype(device.type, mode, bf16_ok)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _to_device(batch: dict, device: torch.device) -> dict:
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _default_tokens(batch: dict) -> int:
    return int(batch["input_ids"].numel())


def _reduce_logs(loss_sum: torch.Tensor, extra: dict[str, torch.Tensor], n: int) -> tuple[float, dict]:
    """Mean over micro-batches and ranks, with one all-reduce for the loss and every extra metric."""
    keys = sorted(extra)
    vec = torch.stack([loss_sum.float().reshape(())] + [extra[k].float().reshape(()) for k in keys]) / n
    vec = distributed.all_mean(vec).tolist()
    return vec[0], dict(zip(keys, vec[1:]))


def _as_tensor(v) -> torch.Tensor:
    return v.detach() if torch.is_tensor(v) else torch.tensor(float(v))


def evaluate(model, loss_fn, val_batches: Callable[[], Iterable[dict]], device, s: LoopSettings) -> dict:
    """Mean validation loss (+ extra metrics) over this rank's share, averaged over ranks; + perplexity."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device)
    extra: dict[str, torch.Tensor] = {}
    n = 0
    with torch.no_grad(), autocast_context(device, s.autocast):
        for batch in val_batches():
            loss, logs = loss_fn(model, _to_device(batch, device))
            total += loss.detach().float()
            for k, v in (logs or {}).items():
                extra[k] = extra.get(k, 0) + _as_tensor(v).to(device)
            n += 1
    model.train(was_training)
    val, logs = _reduce_logs(total, extra, max(n, 1))
    out = {"val_loss": val, "val_ppl": math.exp(min(val, 50.0))}
    out.update({f"val_{k}": v for k, v in logs.items()})
    return out


def _progress(show: bool):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    # stderr, so that stdout stays clean for `--json` results
    return Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not show)


def train(model: torch.nn.Module, batches: Batches, loss_fn: Callable, settings: LoopSettings, *,
          val_batches: Callable[[], Iterable[dict]] | None = None,
          tokens_of: Callable[[dict], int] | None = None,
          extra_state: dict | None = None) -> TrainResult:
    s = settings
    info = distributed.current()
    device, main = info.device, info.is_main
    out = Path(s.out)
    tokens_of = tokens_of or _default_tokens
    torch.manual_seed(s.seed + 1000 * info.rank)  # dropout differs per rank, reproducibly
    opt = make_optimizer(model, s)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(k, s))
    step = 0
    metrics = ckpt.MetricsLog(out / "metrics.jsonl", enabled=main)
    if s.resume:
        found = ckpt.latest(out)
        if found is not None:
            state = ckpt.load(found, model, opt, sched, batches, info)
            step = state["step"]
    metrics.open(keep_up_to=step)
    last_ckpt = None
    loss_val, val = None, {}
    last_time, tokens_since = time.perf_counter(), 0
    history: list[dict] = []
    model.train()
    with _progress(main and s.progress) as bar:
        task = bar.add_task("train", total=s.max_steps, completed=step, loss="-", tps="-")
        while step < s.max_steps:
            loss_sum = torch.zeros((), device=device)
            extra: dict[str, torch.Tensor] = {}
            for micro in range(s.grad_accum):
                batch = _to_device(next(batches), device)
                tokens_since += tokens_of(batch)
                with distributed.no_grad_sync(model, micro < s.grad_accum - 1):
                    with autocast_context(device, s.autocast):
                        loss, logs = loss_fn(model, batch)
                    (loss / s.grad_accum).backward()
                loss_sum += loss.detach().float()
                for k, v in (logs or {}).items():
                    extra[k] = extra.get(k, 0) + _as_tensor(v).to(device)
            grad_norm = None
            if s.clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip)
            lr = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            is_last = step == s.max_steps
            if step % s.log_every == 0 or is_last:
                loss_val, logs = _reduce_logs(loss_sum, extra, s.grad_accum)
                now = time.perf_counter()
                tps = tokens_since * info.world_size / max(now - last_time, 1e-9)
                last_time, tokens_since = now, 0
                rec = {"step": step, "loss": loss_val, "lr": lr, "tokens_per_s": tps, **logs}
                if grad_norm is not None:
                    gn = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
                    rec["grad_norm"] = float(gn)
                metrics.write(rec)
                history.append(rec)
                bar.update(task, completed=step, loss=f"{loss_val:.4f}", tps=f"{tps:,.0f}")
            else:
                bar.update(task, completed=step)
            if val_batches is not None and ((s.eval_every and step % s.eval_every == 0) or is_last):
                val = evaluate(model, loss_fn, val_batches, device, s)
                rec = {"step": step, **val}
                metrics.write(rec)
                history.append(rec)
                if main and s.progress:
                    bar.console.print(f"step {step}: val_loss {val['val_loss']:.4f} "
                                      f"ppl {val['val_ppl']:.2f}")
            if (s.checkpoint_every and step % s.checkpoint_every == 0) or is_last:
                state = {"step": step, "data": batches.state_dict(), "world_size": info.world_size,
                         "settings": {k: str(v) if isinstance(v, Path) else v
                                      for k, v in asdict(s).items()}, **(extra_state or {})}
                last_ckpt = ckpt.save(out, step, model, opt, sched, state, info, keep=s.keep_checkpoints)
    metrics.close()
    if main and s.plot:
        ckpt.plot_losses(out / "metrics.jsonl", out / "loss.png")
    if last_ckpt is None:
        last_ckpt = ckpt.latest(out)
    return TrainResult(step=step, loss=loss_val, val_loss=val.get("val_loss"), val_ppl=val.get("val_ppl"),
                       out=out, checkpoint=last_ckpt, history=history)
