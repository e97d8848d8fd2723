"""Where one decode step's time goes: forward timing, op counts and a torch.profiler table per batch size.

    .venv/bin/python bench/step_profile.py [--model smollm2-135m-instruct] [--int8] [--batch 1 8] [--top 15]
    # A/B against an older commit in the same process, interleaved (robust to a shared machine's load):
    git archive BASE src/ember | tar -x -C /tmp/ab && mv /tmp/ab/src/ember /tmp/ab/ember_base && \
      grep -rl ember /tmp/ab/ember_base | xargs sed -i 's/\bember\.\(models\|errors\|store\|config\)/ember_base.\1/g'
    .venv/bin/python bench/step_profile.py --base /tmp/ab

Runs decode steps of B rows at --ctx cached positions on the compute thread (as the engine does) and prints
per variant and batch: aten ops per step (load-independent), median forward wall ms over --reps steps, and
median thread CPU ms (with --threads 1 this is the step's own work, little affected by other processes).
The forward excludes scheduling and sampling; `bench/engine_bench.py` measures the whole engine.
"""

import argparse
import functools
import importlib
import statistics
import sys
import time

import torch

from ember.engine import compute


def load(pkg: str, model: str, int8: bool):
    loading = importlib.import_module(f"{pkg}.models.loading")
    attention = importlib.import_module(f"{pkg}.models.attention")
    lm = loading.load_model(model, quantize="int8" if int8 else None, with_tokenizer=int8)
    return lm.model, attention.make_batch


def decode_step(model, make_batch, cache, n: int, ctx: int):
    return model.forward(make_batch([(s, ctx, 100 + s) for s in range(n)], [], []), cache)


def timed(fn, reps: int) -> tuple[list[float], list[float]]:
    wall, cpu = [], []
    for _ in range(reps):
        w, c = time.perf_counter(), time.thread_time()
        fn()
        cpu.append((time.thread_time() - c) * 1e3)
        wall.append((time.perf_counter() - w) * 1e3)
    return wall, cpu


def profile(fn, steps: int = 3):
    from torch.profiler import ProfilerActivity, profile as tprofile

    with tprofile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    ev = prof.key_averages()
    return sum(e.count for e in ev) / steps, ev


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--int8", action="store_true")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--ctx", type=int, default=100)
    ap.add_argument("--reps", type=int, default=10, help="steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the variants")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=0, help="print the top ops by self CPU time")
    ap.add_argument("--base", help="folder holding an `ember_base` package (an older commit) to compare")
    # Measured: of two copies of the same code, the model loaded second ran 8-9% faster (memory placement),
    # so an A/B is run twice, once in each load order, and the two runs averaged.
    ap.add_argument("--base-first", action="store_true", help="load the base model first")
    a = ap.parse_args()
    if a.base:
        sys.path.insert(0, a.base)
    compute.set_threads(a.threads)
    ap_order = ["ember_base", "ember"] if a.base_first else ["ember", "ember_base"]
    variants = ap_order if a.base else ["ember"]

    def work():
        with torch.inference_mode():
            models = {}
            for v in variants:
                model, mb = load(v, a.model, a.int8)
                cache = model.make_cache(max(a.batch), a.ctx + 8)
                for s in range(max(a.batch)):
                    model.forward(mb([], [(s, 0, list(range(1, a.ctx + 1)))], [True]), cache)
                models[v] = (model, mb, cache)
            res = {}
            for rnd in range(a.rounds):
                for n in a.batch:
                    order = list(models.items())
                    for v, (model, mb, cache) in order if rnd % 2 == 0 else order[::-1]:  # alternate who goes first
                        fn = functools.partial(decode_step, model, mb, cache, n, a.ctx)
                        fn()
                        w, c = timed(fn, a.reps)
                        r = res.setdefault((v, n), ([], []))
                        r[0].extend(w)
                        r[1].extend(c)
            print(f"{a.model} {'int8' if a.int8 else 'fp32'}, {a.threads} threads, {a.ctx} cached positions, "
                  f"{a.rounds} x {a.reps} steps interleaved")
            print(f"{'variant':<12}{'batch':>6}{'ops/step':>10}{'wall ms':>10}{'cpu ms':>9}{'tok/s':>8}")
            for n in a.batch:
                for v, (model, mb, cache) in models.items():
                    ops, ev = profile(functools.partial(decode_step, model, mb, cache, n, a.ctx))
                    w, c = (statistics.median(x) for x in res[v, n])
                    print(f"{v:<12}{n:>6}{ops:>10.0f}{w:>10.2f}{c:>9.2f}{n * 1e3 / w:>8.1f}")
                    if a.top:
                        print(ev.table(sort_by="self_cpu_time_total", row_limit=a.top))

    compute.run(work)


if __name__ == "__main__":
    main()
