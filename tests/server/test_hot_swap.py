"""A server started with `--model m@production` follows the alias: promotion from another process hot-swaps
the served version while streams run, frees the old one, and a version that fails to load changes nothing.

    .venv/bin/python -m pytest tests/server/test_hot_swap.py -q

m:1 and m:2 are SmolLM2 registered twice (a model big enough that its memory is measurable); m:3 is a
version whose weights are missing, so loading it fails.
"""

import json
import shutil
import threading
import time

import httpx
import pytest
from openai import OpenAI

from ember.config import Settings
from ember.store import registry

PROMPT = "Write a long story about a lighthouse keeper."


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def _wait_for(cond, what: str, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout:.0f}s: {what}")


@pytest.fixture(scope="module")
def follow_home(tmp_path_factory, smollm2_dir):
    home = tmp_path_factory.mktemp("follow-home")
    settings = Settings(home=home)
    registry.register_folder(smollm2_dir, "m", settings=settings)
    registry.register_folder(smollm2_dir, "m", settings=settings)
    broken = tmp_path_factory.mktemp("broken")
    shutil.copy(smollm2_dir / "config.json", broken / "config.json")  # a llama config without its weights
    registry.register_folder(broken, "m", settings=settings, require_weights=False)
    registry.set_alias("m", "production", 1, settings=settings)
    return home


@pytest.fixture(scope="module")
def server(start_server, follow_home):
    from ember.store import keys

    key = keys.create("ops", "admin", Settings(home=follow_home))[1]  # /api/models/loaded is admin only
    server = start_server(follow_home, "--model", "m@production", "--max-slots", 12, "--max-seq-len", 128,
                          "--follow-interval", 0.5)
    server.key = key
    server.headers = {"Authorization": f"Bearer {server.key}"}
    return server


def _answered_by(server) -> str:
    r = httpx.post(server.v1 + "/completions", json={"model": "m@production", "prompt": "Hi", "max_tokens": 2},
                   timeout=120, headers=server.headers)
    assert r.status_code == 200, r.text
    return r.headers["x-ember-model-version"]


def _loaded(server) -> dict:
    return httpx.get(server.url + "/api/models/loaded", timeout=30, headers=server.headers).json()["data"][0]


def _alias(run_cli, home, version):
    r = run_cli("models", "alias", "m@production", version, env={"EMBER_HOME": str(home)}, timeout=120)
    assert r.returncode == 0, r.stderr


def test_promotion_swaps_while_streams_finish(server, follow_home, run_cli):
    assert _answered_by(server) == "m:1"
    models = OpenAI(base_url=server.v1, api_key=server.key).models.list().data
    assert [(m.id, m.root) for m in models] == [("m@production", "m:1")]
    one_model = _rss(server.proc.pid)

    started, results = threading.Barrier(9), []

    def stream():
        with httpx.Client(timeout=300, headers=server.headers) as http, http.stream(
                "POST", server.v1 + "/completions",
                json={"model": "m@production", "prompt": PROMPT, "max_tokens": 48, "ignore_eos": True,
                      "temperature": 0, "stream": True}) as r:
            chunks, first = [], True
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                if first:
                    first = False
                    started.wait()
                if line != "data: [DONE]":
                    chunks.append(json.loads(line[6:]))
            results.append((r.headers["x-ember-model-version"], chunks))

    threads = [threading.Thread(target=stream) for _ in range(8)]
    for t in threads:
        t.start()
    started.wait(timeout=120)  # all 8 streams are generating on m:1

    _alias(run_cli, follow_home, 2)
    # The issue asks for 10 s; loading SmolLM2 takes 6-7 s of that on a quiet 2-core machine (poll: 0.5 s),
    # so the bound is doubled for a shared CI machine. The log line "swapped ... (loaded in N s)" says more.
    # Polled through /api (no generation): on a loaded machine each probe completion would itself take seconds.
    _wait_for(lambda: _loaded(server)["ref"] == "m:2", "new requests routed to m:2", 20)
    assert _answered_by(server) == "m:2"
    for t in threads:
        t.join(300)
    assert len(results) == 8
    for version, chunks in results:
        assert version == "m:1"
        assert not any("error" in c for c in chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert [m.root for m in OpenAI(base_url=server.v1, api_key=server.key).models.list().data] == ["m:2"]

    _wait_for(lambda: "freed m:1" in server.log(), "the old version freed", 60)
    assert _rss(server.proc.pid) <= one_model * 1.10
    assert server.metric("ember:model_swaps_total", model_name="m@production") == 1
    assert server.metric("ember:version_requests_total", version="m:2") >= 1


def test_failed_load_keeps_serving(server, follow_home, run_cli):
    before = _loaded(server)["ref"]
    _alias(run_cli, follow_home, 3)
    _wait_for(lambda: _loaded(server)["failed_ref"] == "m:3", "the failed load reported", 30)
    entry = _loaded(server)
    assert entry["ref"] == before and "m:3" in entry["error"]
    assert _answered_by(server) == before
    assert server.metric("ember:model_load_failures_total", version="m:3") == 1
    assert "loading m:3 failed" in server.log()

    _alias(run_cli, follow_home, 1)  # a rollback is the same move
    _wait_for(lambda: _loaded(server)["ref"] == "m:1", "rolled back to m:1", 20)
    assert _answered_by(server) == "m:1"
    assert _loaded(server)["error"] is None
