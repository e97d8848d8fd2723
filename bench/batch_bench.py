"""Interactive latency next to a batch job: TTFT of streaming chat requests on an idle `ember serve`, then
the same requests while a /v1/batches job runs on the same server; prints both p50s, their ratio (the issue's
bound: within 2x) and the batch's throughput.

    .venv/bin/python bench/batch_bench.py                                    # smollm2-135m-instruct
    .venv/bin/python bench/batch_bench.py --batch-lines 200 --batch-tokens 32 --probes 20 --concurrency 4

Starts its own server (EMBER_HOME as set; the bundled model is pulled on first use). The server's batch
concurrency is EMBER_BATCH_CONCURRENCY (--concurrency here): the batch keeps at most that many requests in
the engine, and interactive requests take the other slots.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ttft(url: str, model: str, i: int) -> float:
    body = {"model": model, "stream": True, "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": f"{i}. Name a colour."}]}
    t0 = time.perf_counter()
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):  # the first token, not the role chunk
                    return time.perf_counter() - t0
    raise RuntimeError("no token came back")


def probes(url: str, model: str, n: int, start: int) -> list[float]:
    out = []
    for i in range(n):
        out.append(ttft(url, model, start + i))
        time.sleep(0.2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch-lines", type=int, default=100)
    ap.add_argument("--batch-tokens", type=int, default=32)
    ap.add_argument("--probes", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "EMBER_BATCH_CONCURRENCY": str(args.concurrency)}
    ember = str(Path(sys.executable).with_name("ember"))
    log = Path(tempfile.mkdtemp(prefix="batch-bench-")) / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([ember, "serve", "--model", args.model, "--port", str(port)], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        while not _ready(url):
            if proc.poll() is not None:
                raise SystemExit(f"server exited; see {log}")
            time.sleep(0.5)
        ttft(url, args.model, -1)  # warm-up
        idle = probes(url, args.model, args.probes, 0)

        with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
            for i in range(args.batch_lines):
                f.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                    "body": {"model": args.model, "max_tokens": args.batch_tokens,
                                             "temperature": 0, "messages": [
                                                 {"role": "user", "content": f"{i}. Write about the sea."}]}})
                        + "\n")
        with open(f.name, "rb") as fh:
            fid = httpx.post(f"{url}/v1/files", files={"file": ("b.jsonl", fh)}, data={"purpose": "batch"},
                             timeout=60).json()["id"]
        t0 = time.perf_counter()
        batch = httpx.post(f"{url}/v1/batches", json={"input_file_id": fid, "endpoint": "/v1/chat/completions",
                                                      "completion_window": "24h"}, timeout=60).json()
        while httpx.get(f"{url}/v1/batches/{batch['id']}").json()["status"] == "validating":
            time.sleep(0.1)
        busy = probes(url, args.model, args.probes, 1000)
        while (b := httpx.get(f"{url}/v1/batches/{batch['id']}").json())["status"] not in (
                "completed", "failed", "cancelled"):
            time.sleep(0.5)
        elapsed = time.perf_counter() - t0
        done_during = b["request_counts"]["completed"]
        p_idle, p_busy = statistics.median(idle), statistics.median(busy)
        print(f"model {args.model}; batch {args.batch_lines} lines x {args.batch_tokens} tokens at concurrency "
              f"{args.concurrency}; {args.probes} TTFT probes each")
        print(f"TTFT p50 idle        {p_idle * 1000:8.1f} ms")
        print(f"TTFT p50 with batch  {p_busy * 1000:8.1f} ms   ratio {p_busy / p_idle:.2f}x (bound: 2x)")
        print(f"batch: {b['status']}, {done_during} lines in {elapsed:.1f} s "
              f"({done_during * args.batch_tokens / elapsed:.0f} output tok/s at most)")
    finally:
        proc.terminate()
        proc.wait(60)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
