"""Fixtures for the server tests: real `ember serve` subprocesses on free ports.

- `start_server(home, *args)`: starts `ember serve --port P *args` with EMBER_HOME=home, waits for /ready,
  returns a `Served` (url, process, log file). Every server a module starts is stopped when the module ends.
- `server`: one shared server per module over the session's catalog home (both bundled models). It only
  reads that home: the models are materialized by this process first (smollm2_dir / minilm_dir).
"""

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import sys

import httpx
import pytest

EMBER_BIN = str(Path(sys.executable).with_name("ember"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Served:
    url: str
    proc: subprocess.Popen
    log_path: Path

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metric(self, name: str, **labels) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 when absent)."""
        text = httpx.get(self.url + "/metrics", timeout=30, headers=getattr(self, "headers", None)).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric, _, lab = head.partition("{")
            if metric != name or not all(f'{k}="{v}"' in lab for k, v in labels.items()):
                continue
            total += float(value)
        return total

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _start(home: Path, args, log_dir: Path, env=None) -> Served:
    port = free_port()
    log_path = log_dir / f"serve-{port}.log"
    full_env = {**os.environ, "EMBER_HOME": str(home), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                **(env or {})}
    full_env.pop("EMBER_DATABASE_URL", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([EMBER_BIN, "serve", "--port", str(port), *map(str, args)], env=full_env,
                                stdout=log, stderr=subprocess.STDOUT)
    served = Served(f"http://127.0.0.1:{port}", proc, log_path)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ember serve exited with {proc.returncode}:\n{served.log()[-3000:]}")
        try:
            if httpx.get(served.url + "/ready", timeout=5).status_code == 200:
                return served
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"ember serve did not become ready:\n{served.log()[-3000:]}")


@pytest.fixture(scope="module")
def start_server(tmp_path_factory):
    started: list[Served] = []
    log_dir = tmp_path_factory.mktemp("serve-logs")

    def start(home, *args, env=None) -> Served:
        s = _start(Path(home), args, log_dir, env)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def server(start_server, catalog_home, smollm2_dir, minilm_dir) -> Served:
    return start_server(catalog_home, "--max-slots", 32, "--max-queue", 256)
