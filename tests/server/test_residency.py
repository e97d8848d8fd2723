"""Runtime model management of a running server: keep_alive unloads an idle model and its next request loads
it again; `ember models ps|load|unload` against the server; a memory budget evicts the least recently used.

    .venv/bin/python -m pytest tests/server/test_residency.py -q
"""

import json
import time

import httpx
import pytest

from ember.config import Settings
from ember.store import registry


def _wait_for(cond, what: str, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout:.0f}s: {what}")


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_chat_dir):
    home = tmp_path_factory.mktemp("residency-home")
    for name in ("a", "b"):
        registry.register_folder(tiny_chat_dir, name, settings=Settings(home=home))
    return home


@pytest.fixture(scope="module")
def keys_(home):
    """/api/models is admin only; an inference key may use models but not load or unload them."""
    from ember.store import keys

    admin, secret = keys.create("ops", "admin", Settings(home=home))
    return secret, keys.create("app", "inference", Settings(home=home))[1], admin.id


@pytest.fixture(scope="module")
def server(start_server, home, keys_):
    """One server for both tests (a server start costs more than the checks): every model unloads after 2 s
    idle, and the memory budget holds one tiny model but not two."""
    server = start_server(home, "--model", "a", "--keep-alive", "2s", "--max-memory", "8MB", "--follow-interval",
                          0.5, "--max-slots", 2, "--max-seq-len", 64)
    server.headers = {"Authorization": f"Bearer {keys_[0]}"}
    return server


def _entry(server, model: str) -> dict | None:
    data = httpx.get(server.url + "/api/models/loaded", timeout=30, headers=server.headers).json()["data"]
    return next((e for e in data if e["id"] == model), None)


def _complete(server, model: str) -> httpx.Response:
    return httpx.post(server.v1 + "/completions", json={"model": model, "prompt": "Hi", "max_tokens": 3},
                      timeout=120, headers=server.headers)


def test_keep_alive_unloads_and_reloads(server):
    assert _complete(server, "a").status_code == 200
    _wait_for(lambda: not _entry(server, "a")["loaded"], "the idle model unloaded", 30)
    assert "idle for 2s (keep_alive): a" in server.log()
    assert [m["id"] for m in httpx.get(server.v1 + "/models", timeout=30, headers=server.headers).json()["data"]] \
        == ["a"]
    assert httpx.get(server.url + "/ready", timeout=30).status_code == 200  # unloaded is not "not ready"
    r = _complete(server, "a")  # waits for the load instead of failing
    assert r.status_code == 200 and r.json()["choices"][0]["text"] is not None
    assert _entry(server, "a")["loaded"]
    assert server.metric("ember:model_unloads_total", model_name="a") >= 1


def test_cli_load_unload_and_memory_budget(server, home, keys_, run_cli):
    env = {"EMBER_HOST": server.url, "EMBER_HOME": str(home), "EMBER_API_KEY": keys_[0]}
    # a keeps loaded from now on (a negative keep_alive: forever), loading it again if keep_alive unloaded it
    run_cli("models", "load", "a", "--keep-alive=-1", env=env, check=True)
    ps = json.loads(run_cli("models", "ps", "--json", env=env, check=True).stdout)
    assert [(e["id"], e["ref"], e["loaded"]) for e in ps["data"]] == [("a", "a:1", True)]
    assert ps["data"][0]["memory_bytes"] > 0 and ps["rss_bytes"] > 0

    # b does not fit next to a in 8 MB: a (idle, least recently used) is unloaded to make room.
    loaded = run_cli("models", "load", "b", "--keep-alive", "1h", "--json", env=env, check=True)
    assert json.loads(loaded.stdout)["keep_alive"] == 3600
    assert _entry(server, "b")["loaded"] and not _entry(server, "a")["loaded"]
    assert "evicted for memory: a" in server.log()
    assert _complete(server, "b").status_code == 200

    out = run_cli("models", "unload", "b", env=env)
    assert out.returncode == 0, out.stderr
    assert not _entry(server, "b")["loaded"]
    assert _complete(server, "b").status_code == 200  # loads again on use

    bad = run_cli("models", "load", "no-such-model", env=env)
    assert bad.returncode != 0 and "no-such-model" in bad.stderr

    # Only admin keys change what is loaded, and every change is in the audit log under the key that made it.
    app = httpx.post(server.url + "/api/models/unload", json={"model": "b"}, timeout=30,
                     headers={"Authorization": f"Bearer {keys_[1]}"})
    assert app.status_code == 403 and _entry(server, "b")["loaded"]
    audit = [e for e in httpx.get(server.url + "/api/audit", params={"action": "model."}, timeout=30,
                                  headers=server.headers).json()["data"] if e["action"] != "model.import"]
    assert [(e["action"], e["target"]) for e in audit] == [
        ("model.load_failed", "no-such-model"), ("model.unload", "b"), ("model.load", "b"), ("model.load", "a")]
    assert {e["actor"] for e in audit} == {keys_[2]}
