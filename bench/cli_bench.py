"""Wall time of one `ember generate` from the shell: through a running `ember serve` vs loading the model
in the CLI process (`--local`, what every call did before cli/remote.py). Prints both medians and the ratio.

    .venv/bin/python bench/cli_bench.py                          # starts its own server (smollm2) on a free port
    .venv/bin/python bench/cli_bench.py --url http://127.0.0.1:8000 --runs 5 --max-tokens 8

The model must be in the registry of EMBER_HOME (`ember models pull smollm2-135m-instruct`). Each run is a
fresh `ember` process, so the figure includes Python start-up, imports and (local) the model load.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

EMBER = str(Path(sys.executable).with_name("ember"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(model: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([EMBER, "serve", "--model", model, "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not become ready")


def _time(args: list[str], env: dict) -> float:
    t = time.perf_counter()
    r = subprocess.run([EMBER, *args], env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t
    if r.returncode != 0 or "note:" in r.stderr and "--local" not in args:
        raise SystemExit(f"ember {' '.join(args)} failed or fell back: {r.stderr}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--url", help="an `ember serve` already running (default: start one)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=8)
    a = ap.parse_args()
    proc, url = (None, a.url) if a.url else _start(a.model)
    env = {**os.environ, "EMBER_HOST": url, "HF_HUB_OFFLINE": "1"}
    args = ["generate", a.model, "The capital of France is", "--max-tokens", str(a.max_tokens), "--temperature", "0"]
    try:
        _time(args, env)  # warm the server's first request
        remote = [_time(args, env) for _ in range(a.runs)]
        local = [_time([*args, "--local"], env) for _ in range(a.runs)]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
    r, lo = statistics.median(remote), statistics.median(local)
    print(f"ember generate {a.model} --max-tokens {a.max_tokens}, median of {a.runs} fresh processes:")
    print(f"  through the server : {r:6.2f} s   (runs: {', '.join(f'{x:.2f}' for x in remote)})")
    print(f"  --local (baseline) : {lo:6.2f} s   (runs: {', '.join(f'{x:.2f}' for x in local)})")
    print(f"  ratio              : {lo / r:6.1f}x faster through the server")
    print(f"  load average       : {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
