"""Aggregate decode throughput of 32 streams spread over 4 unmerged LoRA adapters vs 32 streams on the base
alone, on one engine (models/lora.py). Prints both tok/s and the ratio (target: >= 0.7).

    .venv/bin/python bench/lora_bench.py                        # SmolLM2 from EMBER_HOME's registry
    .venv/bin/python bench/lora_bench.py --streams 32 --max-tokens 64 --rank 16

The 4 adapters are made on the fly with PEFT (random LoRA weights, rank --rank, on q/k/v/o and the MLP
projections: the most expensive case) in a temporary folder; nothing is registered.
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from ember.engine.engine import Engine
from ember.engine.model_set import rss_bytes
from ember.engine.sampling import SamplingParams
from ember.models.loading import resolve_folder

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapters(base: Path, out: Path, n: int, rank: int) -> list[str]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folders = []
    for i in range(n):
        torch.manual_seed(i)
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
        cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, init_lora_weights=False)
        get_peft_model(model, cfg).save_pretrained(str(out / f"a{i}"))
        folders.append(str(out / f"a{i}"))
    return folders


def run(engine: Engine, streams: int, max_tokens: int, adapters: list[str | None]) -> float:
    prompts = [f"Story number {i}: once upon a time" for i in range(streams)]
    p = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    t = time.perf_counter()
    out = engine.generate(prompts, p, adapters=[adapters[i % len(adapters)] for i in range(streams)])
    return sum(len(c.choices[0].token_ids) for c in out) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--adapters", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()
    base = resolve_folder(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        folders = make_adapters(base, Path(tmp), args.adapters, args.rank)
        engine = Engine.load(base, max_slots=args.streams, max_seq_len=256, max_adapters=args.adapters)
        run(engine, 4, 4, [None])  # warm-up
        before = rss_bytes()
        run(engine, 4, 4, folders)  # loads the adapters (cache misses) outside the measurement
        per_adapter = (rss_bytes() - before) / args.adapters
        file_size = sum(f.stat().st_size for f in Path(tmp).glob("a*/adapter_model.safetensors")) / args.adapters
        base_tps = run(engine, args.streams, args.max_tokens, [None])
        lora_tps = run(engine, args.streams, args.max_tokens, folders)
        engine.close()
    print(f"base:     {base_tps:7.1f} tok/s  ({args.streams} streams, {args.max_tokens} tokens each)")
    print(f"adapters: {lora_tps:7.1f} tok/s  ({args.streams} streams over {args.adapters} adapters, rank "
          f"{args.rank}, {len(TARGETS)} projections)")
    print(f"ratio:    {lora_tps / base_tps:.2f}  (target >= 0.70)")
    print(f"RSS per adapter: {per_adapter / 2**20:.1f} MB for a {file_size / 2**20:.1f} MB adapter file "
          f"({per_adapter / file_size:.2f}x; target < 3x)")


if __name__ == "__main__":
    main()
