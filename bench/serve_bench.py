"""Serving benchmark over HTTP, like `vllm bench serve`: N concurrent streaming clients against `ember serve`,
and in the same run the same clients against a baseline server. Prints TTFT, TPOT, ITL and end-to-end
latency (p50/p90/p99), request and output-token throughput for both, and the throughput ratio.

    .venv/bin/python bench/serve_bench.py                            # starts both servers itself
    .venv/bin/python bench/serve_bench.py --url http://127.0.0.1:8000 --concurrency 1,8,32 --max-tokens 128
    .venv/bin/python bench/serve_bench.py --baseline llama-server --llama-server ../shared/tools/llama.cpp/llama-server

Baselines: `transformers` (default: `generate`, one request at a time, behind the same /v1/completions
streaming API shape) or `llama-server` (llama.cpp's server with continuous batching, on GGUF files made from
the same bundled Q4_1 file as Ember's weights: F32 against Ember fp32, Q8_0 against Ember `--quantize int8`;
see bench/llama_baseline.py). With llama-server both servers of a precision are up at once and measured
alternately, level by level, for --rounds rounds; the table shows each figure's median over the rounds.

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
import shlex
import socket
import statistics
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


def wait_ready(url: str, proc: subprocess.Popen, what: str, path: str = "/ready") -> None:
    for _ in range(6000):
        if proc is not None and proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=5).status_code == 200:
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
    ap.add_argument("--baseline", choices=("transformers", "llama-server"), default="transformers")
    ap.add_argument("--llama-server", help="llama.cpp's llama-server binary (default: $EMBER_LLAMA_SERVER).")
    ap.add_argument("--dtype", default="fp32,int8", help="llama-server mode: precisions to compare (fp32,int8).")
    ap.add_argument("--rounds", type=int, default=3, help="llama-server mode: alternating rounds (median shown).")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="llama-server -t (Ember: its default).")
    ap.add_argument("--llama-parallel", type=int, default=32, help="llama-server -np.")
    ap.add_argument("--llama-ctx", type=int, default=16384, help="llama-server -c.")
    ap.add_argument("--llama-args", default="", help="Extra llama-server arguments (one string).")
    ap.add_argument("--ember-args", default="", help="Extra `ember serve` arguments, e.g. '--speculative ngram'.")
    ap.add_argument("--json", help="Also write all results to this file.")
    ap.add_argument("--baseline-server", nargs=2, metavar=("PORT", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline_server:
        return baseline_server(int(args.baseline_server[0]), args.baseline_server[1])

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.baseline == "llama-server" and not args.no_baseline:
        return llama_mode(args)
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


def start_ember(args, port: int, extra: list[str]) -> subprocess.Popen:
    cmd = [str(Path(sys.executable).with_name("ember")), "serve", "--model", args.model, "--port", str(port),
           "--no-workers", *extra, *shlex.split(args.ember_args)]
    print("starting", " ".join(cmd), flush=True)
    return subprocess.Popen(cmd, stderr=subprocess.DEVNULL)


def llama_mode(args) -> None:
    """Ember vs llama-server per precision: both up, levels measured alternately, median of --rounds."""
    import llama_baseline as lb
    from ember.config import get_settings

    server = lb.find_server(args.llama_server)
    if server is None:
        sys.exit(lb.absent_message(args.llama_server))
    levels = [int(c) for c in args.concurrency.split(",")]
    dtypes = [d for d in args.dtype.split(",") if d]
    if bad := [d for d in dtypes if d not in lb.GGUF_TYPES]:
        sys.exit(f"unknown --dtype {bad}; choose from {', '.join(lb.GGUF_TYPES)}")
    cache = get_settings().home / "bench" / "gguf"
    runs: dict = {}  # (dtype, side, level) -> [summary per round]
    for dtype in dtypes:
        gguf = lb.make_gguf(server, dtype, cache)
        eport, lport = free_port(), free_port()
        eurl, lurl = f"http://127.0.0.1:{eport}", f"http://127.0.0.1:{lport}"
        procs = [start_ember(args, eport, ["--max-slots", str(max(*levels, args.llama_parallel))]
                             + (["--quantize", "int8"] if dtype == "int8" else [])),
                 lb.start_server(server, gguf, lport, args.llama_parallel, args.llama_ctx, args.threads,
                                 shlex.split(args.llama_args))]
        try:
            wait_ready(eurl, procs[0], "ember serve")
            wait_ready(lurl, procs[1], "llama-server", "/health")
            sides = {"ember": eurl, "llama.cpp": lurl}
            for url in sides.values():
                httpx.post(url + "/v1/completions", json={"model": args.model, "prompt": "warm up",
                                                          "max_tokens": 4}, timeout=600)
            for r in range(args.rounds):
                for c in levels:
                    order = list(sides.items()) if r % 2 == 0 else list(sides.items())[::-1]
                    for side, url in order:  # alternate who goes first: neither always gets the warmer machine
                        res = asyncio.run(run_level(url, args.model, c, args.prompts_per_level or c, args.max_tokens))
                        runs.setdefault((dtype, side, c), []).append(res)
                        print(f"{dtype} round {r + 1} c={c} {side}: {res['output_tok_per_s']:.1f} tok/s, "
                              f"TTFT p50 {res['ttft_p50_ms']:.0f} ms, TPOT p50 {res['tpot_p50_ms']:.1f} ms",
                              flush=True)
        finally:
            for p in procs:
                p.terminate()
                p.wait()
    print_llama_table(runs, dtypes, levels, args)
    if args.json:
        Path(args.json).write_text(json.dumps({f"{d}/{s}/{c}": v for (d, s, c), v in runs.items()}, indent=2))


def print_llama_table(runs: dict, dtypes: list[str], levels: list[int], args) -> None:
    import llama_baseline as lb

    print(f"\nmedian of {args.rounds} round(s), {args.max_tokens} tokens per request (EOS ignored), "
          f"llama-server -np {args.llama_parallel} -c {args.llama_ctx} -t {args.threads}")
    for dtype in dtypes:
        print(f"\n{'':6}| Ember {dtype:5}{'':22}| llama.cpp {lb.GGUF_TYPES[dtype]:5}{'':18}| ratio (Ember / llama.cpp)")
        print(f"{'conc':6}| {'tok/s':>8} {'TTFT ms':>9} {'TPOT ms':>9}  | {'tok/s':>8} {'TTFT ms':>9} {'TPOT ms':>9}  "
              f"| {'tok/s':>6} {'TTFT':>6} {'TPOT':>6}")
        for c in levels:
            e = {k: statistics.median(r[k] for r in runs[(dtype, "ember", c)])
                 for k in ("output_tok_per_s", "ttft_p50_ms", "tpot_p50_ms")}
            b = {k: statistics.median(r[k] for r in runs[(dtype, "llama.cpp", c)]) for k in e}
            # tok/s: higher is better, so Ember/llama; TTFT and TPOT: lower is better, so llama/Ember (>1: Ember ahead)
            print(f"{c:<6}| {e['output_tok_per_s']:>8.1f} {e['ttft_p50_ms']:>9.0f} {e['tpot_p50_ms']:>9.1f}  "
                  f"| {b['output_tok_per_s']:>8.1f} {b['ttft_p50_ms']:>9.0f} {b['tpot_p50_ms']:>9.1f}  "
                  f"| {e['output_tok_per_s'] / b['output_tok_per_s']:>5.2f}x "
                  f"{b['ttft_p50_ms'] / e['ttft_p50_ms']:>5.2f}x {b['tpot_p50_ms'] / e['tpot_p50_ms']:>5.2f}x")
    print("ratios > 1 mean Ember is ahead (tok/s: Ember/llama.cpp; TTFT, TPOT: llama.cpp/Ember)")


if __name__ == "__main__":
    main()
