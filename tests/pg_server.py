"""A real, throwaway PostgreSQL server for the tests: `initdb` + `pg_ctl` in a temporary directory.

    server = start()                # None when the binaries are missing (see `missing_reason()`)
    url = server.new_database()     # postgresql+psycopg://postgres@127.0.0.1:PORT/t_<hex>, migrated, empty
    server.drop_database(url); server.stop()

The fixtures `pg_server` (session) and `pg_url` (a fresh database per test) in tests/conftest.py wrap this.
Binaries are looked up on PATH, then in /usr/lib/postgresql/*/bin (Debian's `postgresql` package). The
server listens on a free 127.0.0.1 port and a unix socket inside its directory, with trust authentication
for the superuser `postgres`. PostgreSQL refuses to run as root, so as root initdb and the server run as
the unprivileged user `nobody` (the directory is chowned to it); as anyone else they run as that user.

Every new database is a copy of a template database migrated once to Ember's schema (CREATE DATABASE ...
TEMPLATE is a file copy: much cheaper than running the migrations for each test).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

TEMPLATE = "ember_template"


def find_bin_dir() -> Path | None:
    """The directory holding initdb and pg_ctl: PATH first, then Debian's versioned directories."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        if os.access(f"{d}/initdb", os.X_OK) and os.access(f"{d}/pg_ctl", os.X_OK):
            return Path(d)
    return None


def missing_reason() -> str:
    return ("PostgreSQL binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin; "
            "install Debian's `postgresql` package (.ci/run does it as root) to run the PostgreSQL tests")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_owner() -> dict:
    """subprocess arguments that drop root to `nobody` (initdb and postgres refuse to run as root)."""
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam("nobody")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


@dataclass
class PgServer:
    root: Path  # temp dir: data/, the unix socket, the log
    bin_dir: Path
    port: int
    host: str = "127.0.0.1"
    user: str = "postgres"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def _admin(self):
        import psycopg

        return psycopg.connect(host=self.host, port=self.port, user=self.user, dbname="postgres",
                               autocommit=True)

    def new_database(self, migrated: bool = True) -> str:
        """URL of a new, empty database (with Ember's schema at head when `migrated`)."""
        name = "t_" + secrets.token_hex(6)
        with self._admin() as con:
            con.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{TEMPLATE}"' if migrated else ""))
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with self._admin() as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        subprocess.run([str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "-w",
                        "stop"], capture_output=True, **_as_owner())
        shutil.rmtree(self.root, ignore_errors=True)


def _make_template(server: PgServer) -> None:
    """Create the template database and migrate it with Ember's own code (db.connect runs Alembic)."""
    from ember.config import Settings
    from ember.store import db

    with server._admin() as con:
        con.execute(f'CREATE DATABASE "{TEMPLATE}"')
    url = server.url(TEMPLATE)
    db.connect(Settings(home=server.root / "home", database_url=url))
    with db._lock:  # a template must have no open connections when it is copied
        engine, _ = db._engines.pop(url)
    engine.dispose()


def start() -> PgServer | None:
    """Start a server in a fresh temp dir; None when the binaries are missing. Raises if startup fails."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        return None
    owner = _as_owner()
    # As root: directly under /tmp, which `nobody` can reach (TMPDIR may be a root-only folder).
    root = Path(tempfile.mkdtemp(prefix="ember-pg-", dir="/tmp" if owner else None))
    if owner:
        os.chown(root, owner["user"], owner["group"])
    data, port = root / "data", _free_port()
    run = dict(capture_output=True, text=True, cwd=root, **owner)
    r = subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                        "--no-locale", "--no-sync"], **run)
    if r.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {r.stderr or r.stdout}")
    # Durability is irrelevant for a throwaway test server: no fsync makes it several times faster.
    opts = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 "
            "-c shared_buffers=32MB")
    r = subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-o", opts,
                        "-w", "-t", "60", "start"], **run)
    server = PgServer(root, bin_dir, port)
    if r.returncode != 0:
        log = (root / "server.log").read_text(errors="replace") if (root / "server.log").exists() else ""
        server.stop()
        raise RuntimeError(f"pg_ctl start failed: {r.stderr or r.stdout}\n{log[-2000:]}")
    deadline = time.monotonic() + 30
    while True:
        try:
            server._admin().close()
            break
        except Exception:
            if time.monotonic() > deadline:
                server.stop()
                raise
            time.sleep(0.2)
    _make_template(server)
    return server
