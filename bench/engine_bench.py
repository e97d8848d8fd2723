"""Engine benchmark: Ember vs transformers `generate` (static batch) on the same prompts, in one run.

    .venv/bin/python bench/engine_bench.py [--model smollm2-135m-instruct] [--threads 2] [--new-tokens 128] [--int8]

Measures single-stream decode tok/s and aggregate tok/s for 8 and 32 concurrent requests of --new-tokens
new tokens each (greedy, EOS ignored so every request produces exactly that many), prints both and the
ratio, and the engine's resident memory with 32 slots x 2048 positions. With --int8 it also runs the int8
weight path and compares perplexity with fp32 on the same texts (prose, and the standard library's textwrap.py
as code). Everything, transformers included, runs on the compute thread (engine/compute.py).
"""

import argparse
import math
import os
import textwrap
import time

import torch

from ember.engine import compute
from ember.engine.engine import Engine
from ember.engine.sampling import SamplingParams

TOPICS = ["the ocean", "a small village", "machine learning", "the history of Rome", "cooking pasta",
          "a robot", "the moon", "winter mornings", "a jazz musician", "mountain climbing", "ancient Egypt",
          "a lighthouse keeper", "the stock market", "honey bees", "a detective", "electric cars"]


def prompts(n: int) -> list[str]:
    return [f"Write a short story about {TOPICS[i % len(TOPICS)]} (part {i // len(TOPICS) + 1}):" for i in range(n)]


def rss_gib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def bench_ember(engine: Engine, n: int, new: int) -> float:
    p = SamplingParams(temperature=0, max_tokens=new, ignore_eos=True)
    engine.generate(prompts(1), SamplingParams(temperature=0, max_tokens=4))  # warm-up
    t = time.perf_counter()
    outs = engine.generate(prompts(n), p)
    dt = time.perf_counter() - t
    assert all(len(o.choices[0].token_ids) == new for o in outs)
    return n * new / dt


def bench_hf(model, tok, n: int, new: int) -> float:
    tok.padding_side = "left"
    enc = tok(prompts(n), return_tensors="pt", padding=True)
    with torch.inference_mode():
        model.generate(**enc, max_new_tokens=4, do_sample=False)  # warm-up
        t = time.perf_counter()
        out = model.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        dt = time.perf_counter() - t
    return (out.shape[1] - enc["input_ids"].shape[1]) * n / dt


def perplexity(engine: Engine, text: str) -> float:
    """Teacher-forced perplexity of `text` through the engine's own decoder (one prefill)."""
    from ember.models.attention import make_batch

    ids = engine.encode(text)[: engine.context_length - 1]
    cache = engine.model.make_cache(1, len(ids) + 1)
    with torch.inference_mode():
        b = make_batch([], [(0, 0, ids)], [False])
        b.logit_index = torch.arange(len(ids) - 1)
        logits = engine.model.forward(b, cache)
        nll = torch.nn.functional.cross_entropy(logits.float(), torch.tensor(ids[1:]))
    return math.exp(float(nll))


PPL_TEXT = ("The history of science is the study of the development of science and scientific knowledge, "
            "including both the natural and social sciences. Science is a body of empirical, theoretical, and "
            "practical knowledge about the natural world, produced by scientists who emphasize the observation, "
            "explanation, and prediction of real-world phenomena. The earliest roots of science can be traced to "
            "Ancient Egypt and Mesopotamia in around 3000 to 1200 BCE. Their contributions to mathematics, "
            "astronomy, and medicine entered and shaped Greek natural philosophy of classical antiquity, whereby "
            "formal attempts were made to provide explanations of events in the physical world based on natural "
            "causes. After the fall of the Western Roman Empire, knowledge of Greek conceptions of the world "
            "deteriorated in Western Europe during the early centuries of the Middle Ages but was preserved in "
            "the Muslim world during the Islamic Golden Age. The recovery and assimilation of Greek works and "
            "Islamic inquiries into Western Europe from the 10th to 13th century revived natural philosophy, "
            "which was later transformed by the Scientific Revolution that began in the 16th century as new "
            "ideas and discoveries departed from previous Greek conceptions and traditions.")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.environ.get("EMBER_BENCH_MODEL", "smollm2-135m-instruct"),
                    help="a registry reference (pulled from the bundled catalog if missing) or a HF folder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--int8", action="store_true", help="also measure the int8 weight path")
    ap.add_argument("--skip-hf", action="store_true")
    a = ap.parse_args()
    # All torch work, transformers' included, runs on Ember's compute thread: one OpenMP team in the process
    # (engine/compute.py), so neither side is slowed by the other's idle worker threads.
    compute.set_threads(a.threads)
    rows = []
    if not os.path.isdir(a.model):
        from ember.models.loading import resolve_folder
        from ember.store import importers

        if a.model in importers.CATALOG:
            importers.pull(a.model)
        a.model = str(resolve_folder(a.model))  # one folder for both Ember and transformers
    engine = Engine.load(a.model, max_slots=32, max_seq_len=2048)
    bench_ember(engine, 32, 8)
    rss = rss_gib()
    # Code: the standard library's textwrap.py, the same text on every machine with this Python.
    texts = {"prose": PPL_TEXT, "code": open(textwrap.__file__).read()[:3000]}
    ppl32 = {k: compute.run(perplexity, engine, t) for k, t in texts.items()}
    # Worst case: every slot filled to 2048 positions (touch the whole cache so all of it is resident).
    compute.run(engine.cache.k.zero_)
    compute.run(engine.cache.v.zero_)
    rss_full = rss_gib()
    int8, hf, ember = {}, {}, {}
    q = Engine.load(a.model, max_slots=32, max_seq_len=2048, quantize="int8") if a.int8 else None
    ppl8 = {k: compute.run(perplexity, q, t) for k, t in texts.items()} if q else None
    model = tok = None
    if not a.skip_hf:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = compute.run(AutoModelForCausalLM.from_pretrained, a.model, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(a.model)
    # Interleaved per row, so Ember and transformers see the same machine load (it is shared and noisy).
    for n in (1, 8, 32):
        ember[n] = bench_ember(engine, n, a.new_tokens)
        if model is not None:
            hf[n] = compute.run(bench_hf, model, tok, n, a.new_tokens)
        if q is not None:
            int8[n] = bench_ember(q, n, a.new_tokens)
        print(f"  {n} concurrent: ember {ember[n]:.1f}, transformers {hf.get(n, 0):.1f}, int8 {int8.get(n, 0):.1f} "
              f"tok/s (load average {os.getloadavg()[0]:.1f})", flush=True)
    print(f"\nSmolLM2 engine bench: {a.new_tokens} new tokens per request, {a.threads} threads, greedy, fp32")
    print("| concurrent requests | Ember fp32 tok/s | transformers generate tok/s | ratio |"
          + (" Ember int8 tok/s |" if int8 else ""))
    print("|---|---|---|---|" + ("---|" if int8 else ""))
    for n in (1, 8, 32):
        h = hf.get(n)
        rows.append(f"| {n} | {ember[n]:.1f} | {h:.1f} | {ember[n] / h:.2f}x |" if h else
                    f"| {n} | {ember[n]:.1f} | - | - |")
        if int8:
            rows[-1] += f" {int8[n]:.1f} |"
    print("\n".join(rows))
    print(f"Engine RSS, 32 slots x 2048 reserved: {rss:.2f} GiB after running 32 requests; "
          f"{rss_full:.2f} GiB with the whole cache resident (every slot full)")
    for k in texts:
        print(f"Perplexity ({k}) fp32: {ppl32[k]:.3f}"
              + (f"; int8: {ppl8[k]:.3f} ({(ppl8[k] / ppl32[k] - 1) * 100:+.2f}%)" if ppl8 else ""))


if __name__ == "__main__":
    main()
