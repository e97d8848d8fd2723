"""Serving benchmark over HTTP, like `vllm bench serve`: N concurrent streaming clients against `ember serve`,
and in the same run the same clients against a baseline server (transformers `generate`, one request at a
time, behind the same /v1/completions streaming API shape). Prints TTFT, TPOT, ITL and end-to-end latency
(p50/p90/p99), request and output-token throughput for both, and the throughput ratio.

    .venv/bin/python bench/serve_bench.py                            # starts both servers itself
    .venv/bin/python bench/serve_bench.py --url http://127.0.0.1:8000 --concurrency 1,8,32 --max-tokens 128

Every request asks for exactly --max-tokens tokens (ignore_eos on Ember, min_new_tokens on the baseline) so
both sides do the same work. The baseline is serial, so its throughput hardly depends on concurrency; to
keep the run short it serves at most --baseline-prompts requests per level (its latencies then include less
queueing than a full run would: they flatter the baseline).
"""

import argparse
import asyncio
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

PROMPT = "Write a detailed story about a lighthouse keeper who finds a message in a bottle."
_request_ids = itertools.count()


def prompt() -> str:
    # A distinct first token per request: no request reuses another's cached prompt (engine/scheduler.py's
    # prefix reuse), so every request computes its whole prompt, as with unrelated real traffic.
    return f"{next(_request_ids)}. {PROMPT}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----- the baseline server: transformers generate, one request at a time -----
def baseline_server(port: int, folder: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import torch
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import StreamingResponse
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

    # Loading and every generate run on one thread, as Ember's do (one OpenMP team; see engine/compute.py).
    worker = ThreadPoolExecutor(max_workers=1)
    tok = AutoTokenizer.from_pretrained(folder)
    model = worker.submit(lambda: AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()).result()
    app = FastAPI()
    lock = asyncio.Lock()

    @app.get("/ready")
    async def ready():
        return {"status": "ready"}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        n = int(body.get("max_tokens", 16))

        async def events():
            async with lock:  # one request at a time: plain `generate` has no batching across requests
                streamer = TextIteratorStreamer(tok, skip_prompt=True)
                ids = tok(body["prompt"], return_tensors="pt")
                kw = dict(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, streamer=streamer)
                done = worker.submit(lambda: model.generate(**kw))
                it = iter(streamer)
                while True:
                    piece = await asyncio.to_thread(next, it, None)
                    if piece is None:
                        break
                    yield f"data: {json.dumps({'choices': [{'index': 0, 'text': piece, 'finish_reason': None}]})}\n\n"
                done.result()
                usage = {"prompt_tokens": ids["input_ids"].shape[1], "completion_tokens": n}
                yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
                yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# ----- clients -----
async def one_request(http: httpx.AsyncClient, url: str, model: str, max_tokens: int) -> dict:
    body = {"model": model, "prompt": prompt(), "max_tokens": max_tokens, "stream": True, "temperature": 0,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    times, tokens = [], 0
    async with http.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                times.append(time.perf_counter())
    end = time.perf_counter()
    ttft = times[0] - t0 if times else end - t0
    return {"ttft": ttft, "e2e": end - t0, "tokens": tokens or len(times),
            "tpot": (end - t0 - ttft) / max(1, (tokens or len(times)) - 1),
            "itl": [b - a for a, b in zip(times, times[1:])]}


async def run_level(url: str, model: str, concurrency: int, n_requests: int, max_tokens: int) -> dict:
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(3600), limits=limits) as http:
        async def guarded():
            async with sem:
                return await one_request(http, url, model, max_tokens)

        t0 = time.perf_counter()
        results = await asyncio.gather(*(guarded() for _ in range(n_requests)))
        duration = time.perf_counter() - t0
    return summarize(results, duration)


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarize(results: list[dict], duration: float) -> dict:
    out = {"requests": len(results), "duration_s": duration, "req_per_s": len(results) / duration,
           "output_tok_per_s": sum(r["tokens"] for r in results) / duration}
    series = {"ttft": [r["ttft"] for r in results], "tpot": [r["tpot"] for r in results],
              "itl": [x for r in results for x in r["itl"]], "e2e": [r["e2e"] for r in results]}
    for name, xs in series.items():
        for p in (50, 90, 99):
            out[f"{name}_p{p}_ms"] = pct(xs, p) * 1000
    return out


def wait_ready(url: str, proc: subprocess.Popen, what: str) -> None:
    for _ in range(6000):
        if proc is not None and proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url + "/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit(f"{what} did not become ready")


def print_level(c: int, ember: dict, base: dict) -> None:
    print(f"\n=== concurrency {c} ===")
    print(f"{'':22}{'ember':>12}{'baseline':>12}")
    for key in ("requests", "duration_s", "req_per_s", "output_tok_per_s", "ttft_p50_ms", "ttft_p90_ms",
                "ttft_p99_ms", "tpot_p50_ms", "tpot_p90_ms", "tpot_p99_ms", "itl_p50_ms", "itl_p90_ms",
                "itl_p99_ms", "e2e_p50_ms", "e2e_p90_ms", "e2e_p99_ms"):
        print(f"{key:22}{ember[key]:>12.2f}{base[key]:>12.2f}")
    print(f"{'throughput ratio':22}{ember['output_tok_per_s'] / base['output_tok_per_s']:>12.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="A running `ember serve`; default: start one here.")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--prompts-per-level", type=int, default=0, help="Requests per level (default: concurrency).")
    ap.add_argument("--baseline-prompts", type=int, default=4, help="At most this many baseline requests a level.")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--json", help="Also write all results to this file.")
    ap.add_argument("--baseline-server", nargs=2, metavar=("PORT", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline_server:
        return baseline_server(int(args.baseline_server[0]), args.baseline_server[1])

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    procs = []
    try:
        url = args.url
        if not url:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            t = time.perf_counter()
            procs.append(subprocess.Popen([str(Path(sys.executable).with_name("ember")), "serve", "--model",
                                           args.model, "--port", str(port)], stderr=subprocess.DEVNULL))
            wait_ready(url, procs[-1], "ember serve")
            print(f"ember serve ready in {time.perf_counter() - t:.1f}s")
        levels = [int(c) for c in args.concurrency.split(",")]
        httpx.post(url + "/v1/completions", json={"model": args.model, "prompt": "warm up", "max_tokens": 4},
                   timeout=600)
        ember = {}
        for c in levels:
            ember[c] = asyncio.run(run_level(url, args.model, c, args.prompts_per_level or c, args.max_tokens))
            print(f"ember, concurrency {c}: {ember[c]['output_tok_per_s']:.1f} tok/s, "
                  f"TTFT p50 {ember[c]['ttft_p50_ms']:.0f} ms", flush=True)
        for p in procs:
            p.terminate()
            p.wait()
        procs.clear()
        base = {}
        if not args.no_baseline:
            from ember.store import registry

            folder = registry.materialize(args.model)
            bport = free_port()
            burl = f"http://127.0.0.1:{bport}"
            procs.append(subprocess.Popen([sys.executable, __file__, "--baseline-server", str(bport), str(folder)]))
            wait_ready(burl, procs[-1], "baseline server")
            httpx.post(burl + "/v1/completions", json={"prompt": "warm up", "max_tokens": 4}, timeout=600)
            for c in levels:
                n = min(args.prompts_per_level or c, max(args.baseline_prompts, 1))
                base[c] = asyncio.run(run_level(burl, args.model, min(c, n), n, args.max_tokens))
        for c in levels:
            if base:
                print_level(c, ember[c], base[c])
            else:
                print(f"\n=== concurrency {c} ===\n" + "\n".join(f"{k:22}{v:>12.2f}" for k, v in ember[c].items()))
        if args.json:
            Path(args.json).write_text(json.dumps({"ember": ember, "baseline": base}, indent=2))
    finally:
        for p in procs:
            p.terminate()
            p.wait()


if __name__ == "__main__":
    main()
