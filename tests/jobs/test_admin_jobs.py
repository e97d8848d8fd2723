"""/api/jobs for what OpenAI's API has no shape for, and `ember worker` on its own.

- tokenizer training -> data preparation -> GPT pretraining (a configs/*.yaml-like body) -> evaluation of
  an uploaded task file, each a job with events, on a server's worker; POST /api/evals is a job too.
- `ember serve --no-workers` queues but never runs; a separate `ember worker` runs a batch in a child
  process, is killed with SIGKILL half-way, and a new worker resumes the batch with no line run twice.
"""

import json
import os
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx
import pytest
from job_helpers import group_alive, wait_for

pytestmark = pytest.mark.timeout(900)
STDLIB = Path(sysconfig.get_paths()["stdlib"])
EMBER = str(Path(sys.executable).with_name("ember"))
# /api needs an admin key even on a server with no other key (server/auth.py); uploads carry it too.
api = httpx.Client(timeout=30)


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_chat_dir):
    from ember.config import Settings
    from ember.store import registry

    home = tmp_path_factory.mktemp("admin-jobs-home")
    from ember.store import keys

    registry.register_folder(tiny_chat_dir, "tiny", settings=Settings(home=home))
    _, secret = keys.create("jobs-admin", "admin", Settings(home=home))
    api.headers["Authorization"] = f"Bearer {secret}"
    return home


def upload(url, path, purpose, name=None):
    with open(path, "rb") as fh:
        r = api.post(f"{url}/v1/files", files={"file": (name or Path(path).name, fh)}, data={"purpose": purpose})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def run_job(url, body, timeout=300):
    r = api.post(f"{url}/api/jobs", json=body, timeout=30)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    job = wait_for(lambda: (j := api.get(f"{url}/api/jobs/{job_id}").json())["state"] in
                   ("succeeded", "failed", "cancelled") and j, timeout, f"{body['kind']} job")
    assert job["state"] == "succeeded", job["error"]
    return job, api.get(f"{url}/api/jobs/{job_id}/events").json()["data"]


def test_tokenizer_data_pretraining_and_eval_jobs(start_server, home, tmp_path):
    s = start_server(home, "--model", "tiny", "--workers", 2)
    corpus = [upload(s.url, STDLIB / f"{m}.py", "train") for m in ("textwrap", "shlex", "fnmatch")]
    tok, _ = run_job(s.url, {"kind": "tokenizer", "files": corpus, "type": "bpe", "vocab_size": 300,
                             "name": "jt-bpe"})
    assert tok["result"]["model"] == "jt-bpe:1"
    data, _ = run_job(s.url, {"kind": "data", "files": corpus, "tokenizer": "jt-bpe"})
    config = {"name": "jt-gpt", "tokenizer": "jt-bpe", "data": data["id"], "max_steps": 4, "batch_size": 4,
              "seq_len": 32, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2,
              "eval_batches": 1, "checkpoint_every": 2}
    gpt, events = run_job(s.url, {"kind": "train-gpt", "config": config})
    assert gpt["result"]["model"] == "jt-gpt:1"
    assert [e["data"]["step"] for e in events if e["type"] == "metrics" and "train_loss" in e["data"]] == \
        [1, 2, 3, 4]
    assert {e["data"]["step"] for e in events if e["type"] == "checkpoint"} == {2, 4}

    task = tmp_path / "qa.yaml"
    task.write_text("name: qa\ntype: generate\ndata: qa.jsonl\nprompt: '{q}'\nchat: true\nreference: a\n"
                    "max_tokens: 2\nmetrics: [exact_match]\n")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"q": f"{i}+{i}?", "a": str(2 * i)}) + "\n" for i in range(3)))
    ev, _ = run_job(s.url, {"kind": "eval", "model": "tiny", "task": upload(s.url, task, "evals"),
                            "data_file": upload(s.url, rows, "evals")})
    assert "exact_match" in ev["result"]["eval_run"]["metrics"]

    r = api.post(f"{s.url}/api/evals", json={"ref": "tiny", "task": "builtin:generate", "limit": 2})
    assert r.status_code == 201 and r.json()["kind"] == "eval"
    wait_for(lambda: api.get(f"{s.url}/api/jobs/{r.json()['id']}").json()["state"] == "succeeded", 300,
             "the /api/evals job")
    assert len(api.get(f"{s.url}/api/evals", params={"ref": "tiny"}).json()["data"]) == 2

    for bad in ({"kind": "train-gpt", "config": {**config, "data": "/etc"}}, {"kind": "nope"},
                {"kind": "train-gpt", "config": {**config, "nonsense_key": 1}},
                {"kind": "eval", "model": "tiny", "task": "/etc/passwd"}):
        assert api.post(f"{s.url}/api/jobs", json=bad).status_code == 400, bad


def _worker(home, log, concurrency):
    env = {**os.environ, "EMBER_HOME": str(home), "EMBER_BATCH_CONCURRENCY": str(concurrency)}
    env.pop("EMBER_DATABASE_URL", None)
    return subprocess.Popen([EMBER, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)


def test_standalone_worker_killed_mid_batch_resumes_without_duplicates(start_server, home, tmp_path):
    s = start_server(home, "--model", "tiny", "--no-workers")
    n = 150
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions",
                                        "body": {"model": "tiny", "prompt": f"{i} then", "max_tokens": 4,
                                                 "temperature": 0}}) + "\n" for i in range(n)))
    batch = api.post(f"{s.v1}/batches", json={"input_file_id": upload(s.url, path, "batch"),
                                                "endpoint": "/v1/completions", "completion_window": "24h"}).json()
    assert batch["status"] == "validating"  # queued: this server runs no jobs

    with open(tmp_path / "worker1.log", "wb") as log:
        w1 = _worker(home, log, 1)  # one line at a time: slow enough to be killed half-way
    try:
        wait_for(lambda: api.get(f"{s.v1}/batches/{batch['id']}").json()["request_counts"]["completed"] >= 20,
                 300, "part of the batch")
        pid = api.get(f"{s.url}/api/jobs/{batch['id']}").json()["pid"]
        w1.send_signal(signal.SIGKILL)
        w1.wait()
        wait_for(lambda: not group_alive(pid), 10, "the batch's process to end with its worker")
        partial = api.get(f"{s.v1}/batches/{batch['id']}").json()
        assert partial["status"] == "in_progress" and partial["request_counts"]["completed"] < n
    finally:
        w1.kill()
    with open(tmp_path / "worker2.log", "wb") as log:
        w2 = _worker(home, log, 16)
    try:
        done = wait_for(lambda: (b := api.get(f"{s.v1}/batches/{batch['id']}").json())["status"] in
                        ("completed", "failed") and b, 300, "the resumed batch")
    finally:
        w2.send_signal(signal.SIGTERM)
        w2.wait(30)
    assert done["status"] == "completed", done["errors"]
    out = api.get(f"{s.v1}/files/{done['output_file_id']}/content").text.splitlines()
    ids = [json.loads(x)["custom_id"] for x in out]
    assert sorted(ids) == sorted(f"r{i}" for i in range(n))  # every line once: none lost, none twice
    one = json.loads(out[7])
    sync = api.post(f"{s.v1}/completions", json={"model": "tiny", "prompt": f"{one['custom_id'][1:]} then",
                                                   "max_tokens": 4, "temperature": 0}).json()
    assert one["response"]["body"]["choices"][0]["text"] == sync["choices"][0]["text"]
