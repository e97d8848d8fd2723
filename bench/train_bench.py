"""Training throughput of Ember's loop (`ember train gpt`'s train/loop.py) against a minimal plain-PyTorch loop,
same model, same batches, same process; prints tokens/s, MFU and the ratio (target >= 0.9x).

    .venv/bin/python bench/train_bench.py                      # gpt-tiny sizes, 60 timed steps each
    .venv/bin/python bench/train_bench.py --steps 100 --hidden-size 256 --num-layers 4

Corpus: a dozen files of the Python standard library, byte-level BPE (1024 tokens), prepared into a temp dir.
Both loops run the same TokenWindows batches and the same causal-LM loss; Ember's adds its progress bar,
metrics JSONL, LR schedule, clipping and a final checkpoint. tokens/s is over the timed steps after
`--warmup` steps; the end-of-run checkpoint + plot is reported separately. MFU = model FLOPs/s (6 x params
per token + attention) / the peak fp32 GEMM FLOP/s measured on this machine in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ember.train import checkpoint as ckpt  # noqa: E402
from ember.train.config import load_config  # noqa: E402
from ember.train.data import Prepared, prepare  # noqa: E402
from ember.train.gpt import GPTConfig, TokenWindows, build_model, causal_lm_loss  # noqa: E402
from ember.train.loop import LoopSettings, make_optimizer, train  # noqa: E402
from ember.train.tokenizer import load_tokenizer, train_tokenizer  # noqa: E402

FILES = ["textwrap", "shlex", "fnmatch", "glob", "bisect", "heapq", "string", "abc", "contextlib",
         "functools", "argparse", "pathlib"]


def peak_gflops(n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9)
    return best


def flops_per_token(model, cfg) -> float:
    n = sum(p.numel() for n_, p in model.named_parameters() if "embed" not in n_ and "wte" not in n_)
    # 6N for the dense layers (forward + backward) + attention scores/values: 12 * layers * hidden * seq_len
    return 6 * n + 12 * cfg.num_layers * cfg.hidden_size * cfg.seq_len + 6 * cfg.hidden_size * model.config.vocab_size


def plain_loop(model, batches, steps: int, lr: float, clip: float) -> list[float]:
    """The baseline: what one writes by hand. Returns per-step seconds."""
    opt = make_optimizer(model, LoopSettings(out=Path("."), max_steps=steps, lr=lr))
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        batch = next(batches)
        logits = model(input_ids=batch["input_ids"]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), batch["labels"].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        times.append(time.perf_counter() - t)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2, help="alternate plain/ember this many times; best kept")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="gpt config overrides, e.g. hidden_size=256")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(__file__).resolve().parents[1]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = [stdlib / f"{f}.py" for f in FILES]
        train_tokenizer(files, "bpe", 1024, tmp / "tok")
        tok, _ = load_tokenizer(tmp / "tok")
        prepare(files, tok, tmp / "data")
        cfg = load_config(GPTConfig, root / "configs" / "gpt-tiny.yaml",
                          [f"data={tmp / 'data'}", f"tokenizer={tmp / 'tok'}", f"out={tmp / 'run'}",
                           *args.overrides])
        tokens = Prepared.open(tmp / "data").tokens("train")
        total = args.warmup + args.steps
        tok_per_step = cfg.batch_size * cfg.seq_len
        peak = peak_gflops()

        def fresh():
            torch.manual_seed(cfg.seed)
            return build_model(cfg, tok), TokenWindows(tokens, cfg.seq_len, cfg.batch_size, cfg.seed)

        plain_tps, ember_tps, ember_end = [], [], []
        for r in range(args.rounds):
            model, batches = fresh()
            times = plain_loop(model, batches, total, cfg.lr, cfg.clip)
            plain_tps.append(tok_per_step * args.steps / sum(times[args.warmup:]))
            model, batches = fresh()
            out = tmp / f"ember-{r}"
            s = LoopSettings(out=out, max_steps=total, seed=cfg.seed, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                             clip=cfg.clip, progress=sys.stdout.isatty())
            t = time.perf_counter()
            train(model, batches, causal_lm_loss, s)
            wall = time.perf_counter() - t
            recs = [x for x in ckpt.read_metrics(out / "metrics.jsonl") if "loss" in x][args.warmup:]
            step_s = [tok_per_step / x["tokens_per_s"] for x in recs]
            ember_tps.append(tok_per_step * len(step_s) / sum(step_s))
            ember_end.append(wall - sum(tok_per_step / x["tokens_per_s"]
                                        for x in ckpt.read_metrics(out / "metrics.jsonl") if "loss" in x))
        fpt = flops_per_token(model, cfg)
        p, e = max(plain_tps), max(ember_tps)
        print(f"model: {cfg.arch} hidden {cfg.hidden_size} x {cfg.num_layers} layers, "
              f"{sum(x.numel() for x in model.parameters()) / 1e6:.2f}M params, batch {cfg.batch_size} x "
              f"{cfg.seq_len} tokens, {args.steps} timed steps (+{args.warmup} warmup), "
              f"{torch.get_num_threads()} threads")
        print(f"peak fp32 GEMM measured: {peak:.1f} GFLOP/s; model FLOPs/token: {fpt / 1e6:.2f} M")
        print(f"plain PyTorch loop : {p:10,.0f} tokens/s  MFU {p * fpt / 1e9 / peak:6.1%}  "
              f"(rounds: {', '.join(f'{x:,.0f}' for x in plain_tps)})")
        print(f"ember train loop   : {e:10,.0f} tokens/s  MFU {e * fpt / 1e9 / peak:6.1%}  "
              f"(rounds: {', '.join(f'{x:,.0f}' for x in ember_tps)})")
        print(f"ember end-of-run checkpoint + plot: {statistics.median(ember_end):.2f} s")
        print(f"ratio ember / plain: {e / p:.3f}x (target >= 0.9x)")


if __name__ == "__main__":
    main()
