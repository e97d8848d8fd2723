"""`ember generate|chat|batch` answered by a running `ember serve` (EMBER_HOST), and the local fallback.

    .venv/bin/python -m pytest tests/cli/test_remote.py -q

One server per module (the tiny chat model, an API key required); each test runs the real console script
and reads the server's own /metrics to see that the request went through it.
"""

import json
import socket
import time

import pytest


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_chat_dir, start_server):
    from ember.config import Settings
    from ember.store import keys, registry

    home = tmp_path_factory.mktemp("remote-home")
    settings = Settings(home=home)
    registry.register_folder(tiny_chat_dir, "tiny", settings=settings)
    registry.register_folder(tiny_chat_dir, "tiny", settings=settings)  # tiny = tiny:2; tiny:1 is not served
    _, secret = keys.create("cli", "inference", settings)
    server = start_server(home, "--model", "tiny", "--max-slots", "4")
    server.headers = {"Authorization": f"Bearer {secret}"}
    server.env = {"EMBER_HOME": str(home), "EMBER_HOST": server.url, "EMBER_API_KEY": secret}
    return server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _served_requests(server) -> float:
    return server.metric("ember:request_success_total")


def test_generate_goes_through_the_server_and_matches_local(run_cli, served):
    before = _served_requests(served)
    t = time.perf_counter()
    r = run_cli("generate", "tiny", "Hello there", "--max-tokens", "8", env=served.env)
    wall = time.perf_counter() - t
    assert r.returncode == 0, r.stderr
    assert "note:" not in r.stderr  # no fallback
    assert _served_requests(served) == before + 1
    print(f"ember generate through the server: {wall:.2f}s wall")  # the report quotes this (pytest -s)
    assert wall < 5, f"the CLI took {wall:.1f}s through a running server"
    # Greedy: the server's answer is exactly what the in-process engine gives.
    local = run_cli("generate", "tiny", "Hello there", "--max-tokens", "8", "--local", env=served.env)
    assert local.returncode == 0, local.stderr
    assert local.stdout == r.stdout and _served_requests(served) == before + 1

    # Options map to the API: streaming and chat mode give the same text as their local runs.
    args = ["generate", "tiny", "Hi", "--max-tokens", "6", "--chat", "--stream", "--temperature", "0.9", "--seed", "3"]
    remote = run_cli(*args, env=served.env)
    assert remote.returncode == 0 and "note:" not in remote.stderr, remote.stderr
    assert remote.stdout == run_cli(*args, "--local", env=served.env).stdout
    assert _served_requests(served) == before + 2


def test_server_errors_keep_their_exit_codes(run_cli, served):
    r = run_cli("generate", "tiny", "x", "--temperature", "-1", env=served.env)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "temperature" in r.stderr


def test_falls_back_locally_with_one_note(run_cli, served):
    # a version the server does not serve
    r = run_cli("generate", "tiny:1", "Hello there", "--max-tokens", "4", env=served.env)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("note:") == 1 and "does not serve tiny:1" in r.stderr and r.stdout.strip()
    # no key: the server refuses, the local engine answers
    env = {**served.env, "EMBER_API_KEY": ""}
    r = run_cli("generate", "tiny", "Hello there", "--max-tokens", "4", env=env)
    assert r.returncode == 0 and "EMBER_API_KEY" in r.stderr and r.stdout.strip()
    # nobody listening
    env = {**served.env, "EMBER_HOST": f"127.0.0.1:{_free_port()}"}
    r = run_cli("generate", "tiny", "Hello there", "--max-tokens", "4", env=env)
    assert r.returncode == 0 and "no Ember server at http://127.0.0.1:" in r.stderr and r.stdout.strip()


def test_chat_and_batch_through_the_server(run_cli, served, tmp_path):
    before = _served_requests(served)
    r = run_cli("chat", "tiny", "--max-tokens", "5", input="Hello\nAnd again\n/exit\n", env=served.env)
    assert r.returncode == 0 and "note:" not in r.stderr, r.stderr
    assert len(r.stdout.splitlines()) >= 2  # each answer ends with a newline
    assert _served_requests(served) == before + 2

    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [json.dumps({"custom_id": "a", "url": "/v1/chat/completions",
                         "body": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}}),
             '{"custom_id": "broken", ',
             json.dumps({"custom_id": "c", "url": "/v1/completions", "body": {"prompt": "Hi", "max_tokens": 4}}),
             json.dumps({"custom_id": "d", "url": "/v1/completions", "body": {"prompt": "Hi", "max_tokens": 0}})]
    inp.write_text("\n".join(lines) + "\n")
    r = run_cli("batch", "tiny", inp, out, env=served.env)
    assert r.returncode == 0 and "note:" not in r.stderr, r.stderr
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["custom_id"] for x in recs] == ["a", "line-2", "c", "d"]
    assert recs[0]["response"]["body"]["object"] == "chat.completion"
    assert recs[2]["response"]["body"]["choices"][0]["text"] is not None
    assert recs[1]["error"]["code"] == "invalid_request_error" and recs[1]["response"] is None
    assert recs[3]["error"] and "max_tokens" in recs[3]["error"]["message"]
    assert _served_requests(served) == before + 4
