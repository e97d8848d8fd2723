"""Scale-out benchmark: one `ember serve` replica vs two behind nginx, 32 concurrent request streams per
replica, each replica pinned to its own core with `taskset` and run at one thread. Prints the output-token
throughput of both and the ratio (docs/deploy.md quotes a run and its machine).

    .venv/bin/python bench/replica_bench.py                                   # smollm2, 30 s per phase
    .venv/bin/python bench/replica_bench.py --model my-model@production --seconds 20 --cores 2,3 --streams 32

Method: both phases go through the same nginx (one upstream, then two), so the balancer's cost is in both.
Replica i runs under `taskset -c CORE_i` with `--threads 1` (one OpenMP thread, one core): on a 2-core machine
that is the only way for two replicas to each own a core. Every request asks for exactly --max-tokens tokens
(ignore_eos), streamed; throughput = tokens that arrived in the measured window / window (counted as they
arrive, so a window shorter than a request is still exact). The client is one asyncio process, unpinned,
sharing the same cores.
The replicas share one EMBER_HOME (SQLite in WAL mode), which is enough on one machine; give
--database-url postgresql+psycopg://... to measure them on PostgreSQL instead.
"""

import argparse
import asyncio
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

EMBER = str(Path(sys.executable).with_name("ember"))
NGINX = """worker_processes 1;
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream ember {{
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://ember;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""
_ids = itertools.count()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{url} exited:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    sys.exit(f"{url} not ready:\n{log.read_text()[-2000:]}")


def start_replicas(args, cores: list[int], work: Path, env: dict) -> list[tuple[subprocess.Popen, int]]:
    reps = []
    for core in cores:
        port = free_port()
        log = work / f"replica-{core}.log"
        cmd = ["taskset", "-c", str(core), EMBER, "serve", "--port", str(port), "--model", args.model,
               "--threads", "1", "--no-workers", "--max-slots", str(args.streams), "--max-seq-len", "1024"]
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, env={**env, "OMP_NUM_THREADS": "1"}, stdout=fh, stderr=subprocess.STDOUT)
        reps.append((proc, port, log))
    for proc, port, log in reps:
        wait_ready(f"http://127.0.0.1:{port}", proc, log)
    return [(p, port) for p, port, _ in reps]


def start_nginx(ports: list[int], work: Path) -> tuple[subprocess.Popen, str]:
    prefix = work / f"nginx-{len(ports)}"
    prefix.mkdir()
    port = free_port()
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;" for p in ports)
    user = "user root root;" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(NGINX.format(user=user, prefix=prefix, servers=servers, port=port))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-c", str(prefix / "nginx.conf"), "-p", str(prefix), "-g", "daemon off;"])
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(url + "/health", timeout=2)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    sys.exit("nginx did not start")


async def load(url: str, model: str, streams: int, seconds: float, warmup: float, max_tokens: int) -> float:
    """`streams` loops each streaming one request after another; output tokens/s that arrived in the window
    (a streamed chunk is one token, as Ember sends them; counting them as they arrive, not when requests
    finish, keeps a window that is short next to one request's duration exact)."""
    t_start = time.monotonic()
    t0, t1 = t_start + warmup, t_start + warmup + seconds
    tokens = 0

    async def loop(client):
        nonlocal tokens
        while time.monotonic() < t1:
            body = {"model": model, "prompt": f"{next(_ids)}. Tell me a story about the sea.", "stream": True,
                    "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0}
            async with client.stream("POST", url + "/v1/completions", json=body) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if line.startswith("data: {") and t0 <= time.monotonic() <= t1:
                        tokens += 1

    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await asyncio.gather(*(loop(client) for _ in range(streams)))
    return tokens / seconds


def phase(args, cores: list[int], work: Path, env: dict) -> float:
    reps = start_replicas(args, cores, work, env)
    nginx, url = start_nginx([p for _, p in reps], work)
    try:
        return asyncio.run(load(url, args.model, args.streams * len(cores), args.seconds, args.warmup,
                                args.max_tokens))
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(30)
        for proc, _ in reps:
            proc.terminate()
        for proc, _ in reps:
            proc.wait(120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--cores", default="0,1", help="Two CPU cores: replica 1 on the first, replica 2 on the second.")
    ap.add_argument("--streams", type=int, default=32, help="Concurrent request loops per replica.")
    ap.add_argument("--seconds", type=float, default=30.0, help="Measured window per phase.")
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--home", help="EMBER_HOME holding the model (default: EMBER_HOME or ~/.ember).")
    ap.add_argument("--database-url", help="Shared database (default: the home's SQLite file).")
    args = ap.parse_args()
    cores = [int(c) for c in args.cores.split(",")][:2]
    if shutil.which("taskset") is None or not (shutil.which("nginx") or os.access("/usr/sbin/nginx", os.X_OK)):
        sys.exit("needs taskset (util-linux) and nginx")
    work = Path(tempfile.mkdtemp(prefix="replica-bench-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.home:
        env["EMBER_HOME"] = args.home
    if args.database_url:
        env["EMBER_DATABASE_URL"] = args.database_url
    one = phase(args, cores[:1], work, env)
    print(f"1 replica  (core {cores[0]}, {args.streams} streams): {one:8.1f} output tokens/s", flush=True)
    two = phase(args, cores, work, env)
    print(f"2 replicas (cores {cores[0]},{cores[1]}, {2 * args.streams} streams): {two:8.1f} output tokens/s")
    print(f"ratio 2/1: {two / one:.2f}x")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
