"""The store's queries on SQLite and on a real PostgreSQL server (tests/pg_server.py), with the same asserts.

    .venv/bin/python -m pytest tests/store/test_databases.py -q       # PostgreSQL cases skip without initdb

`db_url` (tests/conftest.py) runs each test twice: on the fresh home's SQLite file and on a fresh PostgreSQL
database (EMBER_DATABASE_URL). Concurrency is real: threads each hold their own connection, and the
migration test starts two processes on one empty PostgreSQL database.
"""

import math
import os
import subprocess
import sys
import threading

import pytest

from ember.errors import InvalidRequest, NotFound, Unauthorized
from ember.store import audit, db, evals, files, jobs, keys, registry, responses, usage


def _threads(n, fn):
    errors, out = [], []

    def run(i):
        try:
            out.append(fn(i))
        except BaseException as e:  # reported below, with the others
            errors.append(e)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
    return out


def test_registry_versions_aliases_tags_and_concurrent_imports(db_url, ember_home, tiny_model_dir):
    registry.register_folder(tiny_model_dir, "tiny")
    # Four imports of one name at once: four new numbers, none lost to a unique-constraint race.
    refs = _threads(4, lambda i: registry.register_folder(tiny_model_dir, "tiny", tags={"i": str(i)}).ref)
    assert sorted(refs) == [f"tiny:{n}" for n in range(2, 6)]
    assert registry.resolve("tiny").ref == "tiny:5"
    registry.set_alias("tiny", "production", 2)
    registry.set_alias("tiny", "production", "tiny:3")
    assert [(h["from"], h["to"]) for h in registry.alias_history("tiny", "production")] == [(None, 2), (2, 3)]
    assert registry.resolve("tiny@production").number == 3
    assert registry.tag("tiny:3", {"owner": "ml"}).tags["owner"] == "ml"
    # What PostgreSQL would refuse (too long, NUL) is a clear 400 on both databases, never a 500.
    for bad in ("x" * 1025, "a\x00b"):
        with pytest.raises(InvalidRequest):
            registry.tag("tiny:3", {"note": bad})
    with pytest.raises(InvalidRequest):
        keys.create("bad\x00name")
    # Names are case-sensitive on both databases.
    with pytest.raises(NotFound):
        registry.resolve("TINY")
    registry.delete("tiny:5")
    assert registry.resolve("tiny").ref == "tiny:4"
    assert registry.verify() == []
    # Two concurrent pulls of one source give one version (dedupe under the model's row lock).
    pulled = _threads(2, lambda i: registry.register_folder(tiny_model_dir, "pulled", dedupe_source="s" * 64,
                                                            metadata={"source": {"digest": "s" * 64}}).ref)
    assert pulled == ["pulled:1", "pulled:1"]
    assert registry.resolve("tiny:1").created_at.utcoffset().total_seconds() == 0  # UTC on both


def test_keys_limits_and_usage_counters(db_url, ember_home):
    info, secret = keys.create("team", "inference", rpm=60, budget_tokens=5 * 2**32, models="a,b")
    assert keys.check(secret).id == info.id and keys.get(info.id).budget_tokens == 5 * 2**32
    assert keys.update(info.id, rpm=0, models="").rpm is None
    keys.revoke(info.id)
    with pytest.raises(Unauthorized):
        keys.check(secret)
    assert keys.any_exist()
    # Replicas count one key's requests at once: no lost first insert, no lost increment.
    _threads(4, lambda i: [usage.start_request(info.id, "m", now=1_000_000_000.0) for _ in range(10)])
    usage.add_tokens(info.id, "m", 3 * 2**31, 5, now=1_000_000_000.0)  # over 32 bits
    assert usage.window(info.id, now=1_000_000_000.0) == (40, 3 * 2**31 + 5)
    assert usage.tokens_since(info.id, None) == 3 * 2**31 + 5
    [row] = usage.report(key_id=info.id)
    assert (row["requests"], row["prompt_tokens"]) == (40, 3 * 2**31)
    assert [e["action"] for e in audit.entries(action="key.")] == ["key.revoke", "key.update", "key.create"]
    # rpm across replicas: 20 requests at once against rpm=7 admit exactly 7; refused ones are not counted.
    got = _threads(4, lambda i: [usage.take_request("key_r", "m", 7, None, now=2_000_000_000.0)[0]
                                 for _ in range(5)])
    assert sorted(r or "ok" for rs in got for r in rs) == ["ok"] * 7 + ["rpm"] * 13
    assert usage.window("key_r", now=2_000_000_000.0) == (7, 0)


def test_evaluation_runs_and_a_gated_promotion(db_url, ember_home, tiny_model_dir):
    from ember.evaluate import gates

    for _ in range(2):
        registry.register_folder(tiny_model_dir, "tiny")

    def record(ref, **metrics):
        return evals.record(ref, "qa", task_digest="a" * 64, data_digest="b" * 64, settings_used={"n": 1},
                            metrics=metrics, outputs=[{"index": 0, "output": "x"}])

    one = record("tiny:1", acc=0.5)
    record("tiny:2", acc=0.25)
    assert evals.outputs(evals.get(one["id"])) == [{"index": 0, "output": "x"}]
    assert [r["version"] for r in evals.model_runs("tiny")] == [1, 2]
    registry.set_alias("tiny", "production", 1)
    assert not gates.promote("tiny", "production", 2, ["acc>=current"]).moved
    record("tiny:2", acc=0.75)
    assert gates.promote("tiny", "production", 2, ["acc>=current"]).moved
    actions = [h["action"] for h in registry.alias_history("tiny", "production")]
    assert actions == ["move", "promote_refused", "promote"]
    # A diverged metric is stored, not refused (PostgreSQL's json has no NaN: it reads back as null).
    record("tiny:1", loss=float("nan"))
    loss = evals.runs("tiny:1")[-1]["metrics"]["loss"]
    assert loss is None if db_url.startswith("postgresql") else math.isnan(loss)


def test_jobs_are_claimed_by_exactly_one_worker(db_url, ember_home):
    ids = [jobs.create("eval", {"i": i}, "local")["id"] for i in range(24)]

    def worker(w):
        mine = []
        while (job := jobs.claim(f"host:{w}")) is not None:
            mine.append(job["id"])
        return mine

    claimed = _threads(4, worker)
    flat = [j for mine in claimed for j in mine]
    assert sorted(flat) == sorted(ids)  # every job once, none twice
    j = jobs.get(ids[0])
    assert j["state"] == "running" and j["attempts"] == 1 and j["worker"].startswith("host:")
    assert jobs.requeue(ids[0], "worker lost", worker=j["worker"])
    assert jobs.claim("host:9")["id"] == ids[0] and jobs.get(ids[0])["attempts"] == 2
    assert jobs.finish(ids[0], "succeeded", result={"x": 1}) and not jobs.finish(ids[0], "failed")
    assert jobs.request_cancel(ids[1])["cancel_requested"] is True
    jobs.add_events(ids[0], [{"type": "metrics", "message": "", "data": {"loss": 1.5}}])
    evs = jobs.events(ids[0])
    assert [e["data"].get("state") for e in evs if e["type"] == "state"] == ["queued", "running", "queued",
                                                                            "running", "succeeded"]
    assert [e["data"] for e in jobs.events(ids[0], type="metrics")] == [{"loss": 1.5}]
    assert len(jobs.list_jobs(state="running")) == 23


def test_files_responses_and_audit(db_url, ember_home, tmp_path):
    src = tmp_path / "train.jsonl"
    src.write_text('{"text": "hi"}\n')
    f = files.add(src, filename="train.jsonl", purpose="fine-tune", owner="key_a")
    assert files.get(f["id"], "key_a")["bytes"] == src.stat().st_size
    with pytest.raises(NotFound):
        files.get(f["id"], "key_b")
    assert [x["id"] for x in files.list_files("key_a")] == [f["id"]]
    responses.save({"id": "resp_1", "model": "m", "output": []}, [{"role": "user", "content": "Hi"}])
    assert responses.load("resp_1")[1] == [{"role": "user", "content": "Hi"}]
    audit.record("custom.thing", "t", after={"v": 1})
    assert audit.entries(action="custom.")[0]["after"] == {"v": 1}
    assert registry.gc() == 0  # the uploaded file's blob is kept


def test_two_processes_migrate_one_empty_postgresql_database_once(pg_server, tmp_path):
    """Replicas starting together: the advisory lock lets one migrate while the other waits."""
    url = pg_server.new_database(migrated=False)
    code = "from ember.store import db, keys; db.connect(); print(keys.any_exist())"
    env = {**os.environ, "EMBER_DATABASE_URL": url}
    plain = url.replace("postgresql+psycopg://", "postgresql://")  # the libpq-style URL works too
    procs = [subprocess.Popen([sys.executable, "-c", code], env={**env, "EMBER_HOME": str(tmp_path / f"h{i}"),
                                                                 **({"EMBER_DATABASE_URL": plain} if i else {})},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    import psycopg

    with psycopg.connect(url.replace("+psycopg", "")) as con:
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        cfg = Config()
        cfg.set_main_option("script_location", str(db.Path(db.__file__).parent / "migrations"))
        head = ScriptDirectory.from_config(cfg).get_current_head()
        assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]
        big = con.execute("SELECT data_type FROM information_schema.columns WHERE table_name = 'files' "
                          "AND column_name = 'size'").fetchone()
        assert big == ("bigint",)
    db.dispose_all()
    pg_server.drop_database(url)
