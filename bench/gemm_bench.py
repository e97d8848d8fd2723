"""The decode step's projection GEMMs alone, per kernel and row count: which kernel suits small batches.

    .venv/bin/python bench/gemm_bench.py [--rows 1 4 32] [--threads 1] [--layers 30]

SmolLM2-135M's four projection shapes x --layers (random weights, together larger than the CPU caches, so
each call streams its weight from memory as a real step does), run through: oneDNN-packed fp32 (Ember's
fp32 path, models/packed.py), MKL `x @ W`, Ember's W8A8 `Int8Linear` (models/int8.py, quantisation
included) through its C kernel (models/cpu_kernels.c, used for 1-8 rows) and through torch (`_int_mm`), and
torch's weight-only `_weight_int8pack_mm`. Prints median thread CPU ms and wall ms per pass
over all matrices, variants interleaved.
"""

import argparse
import statistics
import time

import torch

from ember.models import cpu_kernels
from ember.models.int8 import Int8Linear
from ember.models.packed import PackedLinear

SHAPES = [(576, 960), (576, 576), (576, 3072), (1536, 576)]  # qkv, o, gate/up, down (K, N)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4, 32])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    mats = []
    for _ in range(a.layers):
        for k, n in SHAPES:
            w = torch.randn(k, n) * 0.05
            i8 = Int8Linear(w)
            mats.append((k, PackedLinear(w), w, i8, i8.q.t().contiguous(), i8.scale.clone()))
    with torch.inference_mode():
        for m in a.rows:
            xs = {k: torch.randn(m, k) for k, _ in SHAPES}
            variants = {
                "oneDNN packed fp32": lambda xs=xs: [xs[k] @ p for k, p, *_ in mats],
                "MKL x @ W fp32": lambda xs=xs: [xs[k] @ w for k, _, w, *_ in mats],
                "Int8Linear C kernel": lambda xs=xs: [xs[k] @ i for k, _, _, i, *_ in mats],
                "Int8Linear torch": lambda xs=xs: [i.through_torch(xs[k]) for k, _, _, i, *_ in mats],
                "_weight_int8pack_mm": lambda xs=xs: [torch._weight_int8pack_mm(xs[k], q, s)
                                                      for k, _, _, _, q, s in mats],
            }
            if m > cpu_kernels.max_rows():
                del variants["Int8Linear C kernel"]  # more rows than the kernel takes: the torch path runs
            res = {name: ([], []) for name in variants}
            for _ in range(a.rounds):
                for name, fn in variants.items():
                    fn()
                    for _ in range(3):
                        c, w = time.thread_time(), time.perf_counter()
                        fn()
                        res[name][0].append((time.thread_time() - c) * 1e3)
                        res[name][1].append((time.perf_counter() - w) * 1e3)
            for name, (cpu, wall) in res.items():
                cpu_ms, wall_ms = statistics.median(cpu), statistics.median(wall)
                print(f"rows {m:>3}  {name:<22} cpu {cpu_ms:8.1f} ms  wall {wall_ms:8.1f} ms")


if __name__ == "__main__":
    main()
