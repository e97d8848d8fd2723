"""Per-key ownership of files and jobs, with keys on: a key sees and uses only its own uploads and jobs, an
admin key sees everything, /api/jobs is admin only. (No models are loaded and no job runs: the app is used
without its lifespan, so nothing but the routes and the database take part.)"""

import json

from fastapi.testclient import TestClient
from job_helpers import write_chat


def test_a_key_sees_only_its_own_files_and_jobs(tiny_model, tmp_path):
    from ember.server.app import ServeConfig, create_app
    from ember.store import keys

    _, a = keys.create("a", "inference")
    _, b = keys.create("b", "inference")
    _, admin = keys.create("admin", "admin")
    ha, hb, hadmin = ({"Authorization": f"Bearer {k}"} for k in (a, b, admin))
    client = TestClient(create_app(ServeConfig(models=["tiny"])))
    path = write_chat(tmp_path / "train.jsonl")
    with open(path, "rb") as fh:
        r = client.post("/v1/files", headers=ha, files={"file": ("train.jsonl", fh)}, data={"purpose": "fine-tune"})
    assert r.status_code == 200 and r.json()["sha256"] and r.json()["metadata"]["lines"] == 8
    fid = r.json()["id"]
    assert client.post("/v1/files", files={"file": ("x.jsonl", b"{}")}, data={"purpose": "batch"}).status_code == 401

    assert [f["id"] for f in client.get("/v1/files", headers=ha).json()["data"]] == [fid]
    assert client.get("/v1/files", headers=hb).json()["data"] == []
    assert client.get(f"/v1/files/{fid}", headers=hb).status_code == 404
    assert client.get(f"/v1/files/{fid}/content", headers=hb).status_code == 404
    assert client.get(f"/v1/files/{fid}/content", headers=ha).content == path.read_bytes()
    assert client.get(f"/v1/files/{fid}", headers=hadmin).status_code == 200

    body = {"model": "tiny", "training_file": fid, "hyperparameters": {"n_epochs": 1}}
    r = client.post("/v1/fine_tuning/jobs", headers=hb, json=body)
    assert r.status_code == 400 and fid in r.json()["error"]["message"]
    r = client.post("/v1/fine_tuning/jobs", headers=ha, json=body)
    assert r.status_code == 200 and r.json()["status"] == "queued" and r.json()["object"] == "fine_tuning.job"
    job = r.json()["id"]
    assert client.get(f"/v1/fine_tuning/jobs/{job}", headers=hb).status_code == 404
    assert client.get("/v1/fine_tuning/jobs", headers=hb).json()["data"] == []
    assert client.get("/api/jobs", headers=ha).status_code == 403
    assert [j["id"] for j in client.get("/api/jobs", headers=hadmin).json()["data"]] == [job]
    r = client.post(f"/v1/fine_tuning/jobs/{job}/cancel", headers=ha)  # queued: cancelled at once
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    events = client.get(f"/v1/fine_tuning/jobs/{job}/events", headers=ha).json()["data"]
    assert [e["message"] for e in events][:2] == ["job cancelled", "fine-tune job queued"]

    for bad in ({**body, "method": {"type": "dpo"}}, {**body, "integrations": [{"type": "wandb"}]},
                {**body, "unknown_field": 1}, {**body, "suffix": "../x"}, {**body, "ember": {"nope": 1}}):
        r = client.post("/v1/fine_tuning/jobs", headers=ha, json=bad)
        assert r.status_code == 400, (json.dumps(bad), r.text)
    assert client.delete(f"/v1/files/{fid}", headers=hb).status_code == 404
    assert client.delete(f"/v1/files/{fid}", headers=ha).json()["deleted"] is True
