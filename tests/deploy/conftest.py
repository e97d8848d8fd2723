"""A real small deployment on loopback: one PostgreSQL (tests/pg_server.py), a shared blob folder, two
`ember serve` replicas and Debian's nginx in front of them with passive health checks (docs/deploy.md).

- `cluster`: (module scope) the running deployment: `.nginx` (the balancer's URL), `.replicas` (each one's URL,
  process, port), `.admin` (an admin key's secret), `.db_url`, `.settings` (the test's view of the shared
  database and blobs). Skips with the reason when nginx or the PostgreSQL binaries are missing.

The model is a tiny random Llama with SmolLM2's tokenizer and a 4096-token context (long streams are cheap),
registered as `tiny` with `tiny@prod` -> version 1; replicas serve `tiny@prod`.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tiny_models import save_tiny_chat_llama

EMBER_BIN = str(Path(sys.executable).with_name("ember"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

NGINX_CONF = """
worker_processes 1;
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream ember {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://ember;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_buffering off;              # stream tokens as they come
            proxy_read_timeout 600s;
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            add_header X-Upstream $upstream_addr always;   # which replica answered (tests and debugging)
        }}
    }}
}}
"""


def nginx_bin() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def start_nginx(prefix: Path, upstream_ports: list[int]) -> tuple[subprocess.Popen, str]:
    prefix.mkdir(parents=True, exist_ok=True)
    port = free_port()
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;" for p in upstream_ports)
    user = "user root root;" if os.geteuid() == 0 else ""  # its workers must reach the temp folders in prefix
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(user=user, prefix=prefix, servers=servers, port=port))
    proc = subprocess.Popen([nginx_bin(), "-c", str(conf), "-p", str(prefix), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=open(prefix / "stderr.log", "wb"))
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(url + "/health", timeout=2)
            return proc, url
        except httpx.HTTPError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("nginx did not start: " + (prefix / "stderr.log").read_text()[-2000:])


@dataclass
class Replica:
    url: str
    port: int
    proc: subprocess.Popen
    log: Path

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@dataclass
class Cluster:
    nginx: str
    replicas: list[Replica]
    admin: str
    db_url: str
    settings: object
    nginx_proc: subprocess.Popen = None
    extra: dict = field(default_factory=dict)

    def headers(self, secret: str | None = None) -> dict:
        return {"Authorization": f"Bearer {secret or self.admin}"}


def start_replicas(root: Path, n: int, env: dict, args: list[str]) -> list[Replica]:
    """Starts n `ember serve` processes (own EMBER_HOME each: the local cache) and waits until all are ready."""
    reps = []
    for i in range(n):
        port = free_port()
        log = root / f"replica-{i}.log"
        full = {**os.environ, "EMBER_HOME": str(root / f"home-{i}"), "HF_HUB_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", **env}
        with open(log, "wb") as fh:
            proc = subprocess.Popen([EMBER_BIN, "serve", "--port", str(port), *args], env=full, stdout=fh,
                                    stderr=subprocess.STDOUT)
        reps.append(Replica(f"http://127.0.0.1:{port}", port, proc, log))
    deadline = time.monotonic() + 600
    for r in reps:
        while True:
            if r.proc.poll() is not None:
                raise RuntimeError(f"replica exited {r.proc.returncode}:\n{r.log.read_text()[-3000:]}")
            try:
                if httpx.get(r.url + "/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("replica not ready:\n" + r.log.read_text()[-3000:])
            time.sleep(0.3)
    return reps


@pytest.fixture(scope="module")
def cluster(pg_server, tiny_chat_dir, tmp_path_factory):
    if nginx_bin() is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx; .ci/run installs it as root)")
    from ember.config import Settings
    from ember.store import db, keys, registry

    root = tmp_path_factory.mktemp("cluster")
    db_url = pg_server.new_database()
    blob_url = f"file://{root / 'shared-blobs'}"
    settings = Settings(home=root / "ops-home", database_url=db_url, blob_url=blob_url)
    model = save_tiny_chat_llama(tiny_chat_dir, root / "model", max_positions=4096)
    registry.register_folder(model, "tiny", settings=settings)
    registry.set_alias("tiny", "prod", 1, settings=settings)
    _, admin = keys.create("ops", "inference,admin", settings=settings)
    env = {"EMBER_DATABASE_URL": db_url, "EMBER_BLOB_URL": blob_url}
    reps = start_replicas(root, 2, env, ["--model", "tiny@prod", "--no-workers", "--threads", "1",
                                         "--max-seq-len", "4096"])
    nginx_proc = None
    try:
        nginx_proc, nginx = start_nginx(root / "nginx", [r.port for r in reps])
        yield Cluster(nginx, reps, admin, db_url, settings, nginx_proc)
    finally:
        if nginx_proc is not None:
            nginx_proc.terminate()
            nginx_proc.wait(30)
        for r in reps:
            if r.proc.poll() is None:
                r.proc.terminate()
                try:
                    r.proc.wait(60)
                except subprocess.TimeoutExpired:
                    r.kill()
        db.dispose_all()
        pg_server.drop_database(db_url)
