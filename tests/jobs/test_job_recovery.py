"""No job stays `running` after its worker is gone.

- `kill -9` of `ember serve` while its worker trains: the job's process group dies with it (the child's
  watchdog), and the restarted server resumes the job from its last checkpoint to `succeeded`.
- A running job whose worker is dead is queued again when it can resume (training, batches) and failed with
  the reason when it cannot (an evaluation); `ember jobs` shows and cancels jobs without a server.
"""

import json
import os
import signal

import httpx
import pytest
from job_helpers import group_alive, wait_for, write_chat

pytestmark = pytest.mark.timeout(900)
# /api needs an admin key even on a server with no other key (server/auth.py); uploads carry it too.
api = httpx.Client(timeout=30)


@pytest.fixture
def recovery_home(tmp_path, tiny_chat_dir):
    from ember.config import Settings
    from ember.store import registry

    home = tmp_path / "home"
    from ember.store import keys

    registry.register_folder(tiny_chat_dir, "tiny", settings=Settings(home=home))
    api.headers["Authorization"] = "Bearer " + keys.create("jobs-admin", "admin", Settings(home=home))[1]
    return home


def _events(url, job_id):
    return api.get(f"{url}/api/jobs/{job_id}/events", timeout=30).json()["data"]


def test_kill_9_of_the_server_then_restart_resumes_from_the_checkpoint(start_server, recovery_home, tmp_path):
    a = start_server(recovery_home, "--model", "tiny")
    with open(write_chat(tmp_path / "train.jsonl"), "rb") as fh:
        f = api.post(f"{a.v1}/files", files={"file": ("train.jsonl", fh)}, data={"purpose": "fine-tune"}).json()
    job = api.post(f"{a.v1}/fine_tuning/jobs", json={
        "model": "tiny", "training_file": f["id"], "hyperparameters": {"batch_size": 4},
        "ember": {"max_steps": 16, "checkpoint_every": 3, "max_length": 64}}).json()
    wait_for(lambda: any(e["type"] == "checkpoint" for e in _events(a.url, job["id"])), 300, "a checkpoint")
    pid = api.get(f"{a.url}/api/jobs/{job['id']}").json()["pid"]
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait()
    wait_for(lambda: not group_alive(pid), 10, "the orphaned training process to end")

    b = start_server(recovery_home, "--model", "tiny")
    final = wait_for(lambda: (j := api.get(f"{b.url}/api/jobs/{job['id']}").json())["state"] in
                     ("succeeded", "failed") and j, 300, "the resumed job to finish")
    assert final["state"] == "succeeded", final["error"]
    assert final["attempts"] == 2
    events = _events(b.url, job["id"])
    resumed_at = next(i for i, e in enumerate(events) if "resuming" in e["message"])
    steps_after = [e["data"]["step"] for e in events[resumed_at:] if e["type"] == "metrics"]
    assert steps_after and min(steps_after) > 3 and max(steps_after) == 16  # continued, not restarted
    reply = api.post(f"{b.v1}/chat/completions", timeout=60, json={
        "model": final["result"]["fine_tuned_model"], "max_tokens": 2,
        "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200


def test_a_dead_workers_jobs_are_resumed_or_failed_with_the_reason(ember_home, tiny_model, run_cli, tmp_path):
    from ember.jobs import queue
    from ember.jobs.worker import Worker
    from ember.store import files, jobs

    fid = files.add(write_chat(tmp_path / "t.jsonl"), filename="t.jsonl", purpose="fine-tune",
                    meta={"lines": 8})["id"]
    ft = queue.submit("fine-tune", {"model": "tiny", "training_file": fid, "output_name": "tiny-ft-x"}, "local")
    ev = queue.submit("eval", {"model": "tiny", "task": "builtin:generate"}, "local")
    dead = f"{os.uname().nodename}:999999999:abc"  # this host, a pid that cannot exist
    for _ in (ft, ev):
        assert jobs.claim(dead)["worker"] == dead
    Worker().recover()
    ft, ev = jobs.get(ft["id"]), jobs.get(ev["id"])
    assert ft["state"] == "queued" and ev["state"] == "failed" and "is gone" in ev["error"]

    out = run_cli("jobs", "list", "--json")
    assert out.returncode == 0 and {j["id"] for j in json.loads(out.stdout)} == {ft["id"], ev["id"]}
    out = run_cli("jobs", "cancel", ft["id"])
    assert out.returncode == 0 and "cancelled" in out.stdout and jobs.get(ft["id"])["state"] == "cancelled"
    out = run_cli("jobs", "logs", ev["id"])
    assert out.returncode == 0 and "is gone" in out.stdout
    assert run_cli("jobs", "show", "job-nope").returncode == 3
