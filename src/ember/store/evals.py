"""Evaluation runs stored per model version (the `eval_runs` table), with per-example outputs in a blob.

    ember eval smollm2-135m-instruct --task builtin:generate     # records one run for smollm2-135m-instruct:1
    ember models show smollm2-135m-instruct --json               # ... and shows it under "evals"

A run is immutable: version, task name, task digest (the task's settings), data digest (its examples),
settings, metrics, and the digest of a JSONL blob of per-example outputs. Runs live in the registry database,
so they survive restarts and are shared by every process using the same EMBER_HOME / database URL.
"""

import json
import os
import tempfile
from pathlib import Path

from sqlalchemy import select

from ember.config import Settings, get_settings
from ember.errors import NotFound
from ember.store import blobs, db, registry


def _aware(t):
    from datetime import timezone

    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _row_dict(r: db.EvalRun, ref: str) -> dict:
    return {"id": r.id, "ref": ref, "task": r.task, "task_digest": r.task_digest, "data_digest": r.data_digest,
            "settings": r.settings or {}, "metrics": r.metrics or {}, "outputs_digest": r.outputs_digest,
            "created_at": _aware(r.created_at).isoformat()}


def record(ref: str, task: str, *, task_digest: str, data_digest: str, settings_used: dict, metrics: dict,
           outputs: list[dict] | None = None, settings: Settings | None = None) -> dict:
    """Store one run for the version `ref` resolves to (now); returns it as a dict."""
    settings = settings or get_settings()
    info = registry.resolve(ref, settings)
    outputs_digest = None
    if outputs is not None:
        settings.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=settings.tmp_dir, prefix="eval-", suffix=".jsonl")
        try:
            with os.fdopen(fd, "w") as f:
                for o in outputs:
                    f.write(json.dumps(o, ensure_ascii=False, default=str) + "\n")
            # Held like an import so a concurrent `gc` cannot delete the blob before the row references it.
            with registry.gc_lock(settings, exclusive=False):
                outputs_digest, _ = blobs.put_file(Path(tmp), settings)
                return _insert(info, task, task_digest, data_digest, settings_used, metrics, outputs_digest,
                               settings)
        finally:
            os.unlink(tmp)
    return _insert(info, task, task_digest, data_digest, settings_used, metrics, outputs_digest, settings)


def _insert(info, task, task_digest, data_digest, settings_used, metrics, outputs_digest, settings) -> dict:
    with db.session(settings) as s:
        v = _version_row(s, info.name, info.number)
        row = db.EvalRun(version_id=v.id, task=task, task_digest=task_digest, data_digest=data_digest,
                         settings=settings_used, metrics=metrics, outputs_digest=outputs_digest)
        s.add(row)
        s.flush()
        from ember.store import audit

        audit.add(s, "eval.run", info.ref, after={"run": row.id, "task": task, "metrics": metrics})
        return _row_dict(row, info.ref)


def _version_row(s, name: str, number: int) -> db.Version:
    v = s.scalar(select(db.Version).join(db.Model).where(db.Model.name == name, db.Version.number == number))
    if v is None:
        raise NotFound(f"version {name}:{number} not found")
    return v


def runs(ref: str, task: str | None = None, settings: Settings | None = None) -> list[dict]:
    """Every run of one version, oldest first (optionally of one task name)."""
    info = registry.resolve(ref, settings)
    with db.session(settings) as s:
        v = _version_row(s, info.name, info.number)
        return runs_for_version_id(s, v.id, info.ref, task)


def runs_for_version_id(s, version_id: int, ref: str, task: str | None = None) -> list[dict]:
    q = select(db.EvalRun).where(db.EvalRun.version_id == version_id).order_by(db.EvalRun.id)
    if task:
        q = q.where(db.EvalRun.task == task)
    return [_row_dict(r, ref) for r in s.scalars(q)]


def model_runs(name: str, settings: Settings | None = None) -> list[dict]:
    """Every run of every version of a model, oldest first (the metric history a report plots)."""
    with db.session(settings) as s:
        q = (select(db.EvalRun, db.Version.number).join(db.Version, db.EvalRun.version_id == db.Version.id)
             .join(db.Model).where(db.Model.name == name).order_by(db.EvalRun.id))
        return [{**_row_dict(r, f"{name}:{n}"), "version": n} for r, n in s.execute(q)]


def get(run_id: int, settings: Settings | None = None) -> dict:
    with db.session(settings) as s:
        r = s.get(db.EvalRun, run_id)
        if r is None:
            raise NotFound(f"evaluation run {run_id} not found")
        v = s.get(db.Version, r.version_id)
        return _row_dict(r, f"{v.model.name}:{v.number}")


def outputs(run: dict, settings: Settings | None = None) -> list[dict]:
    """The per-example outputs of a run, read back from its (verified) blob."""
    if not run.get("outputs_digest"):
        return []
    blobs.verify_blob(run["outputs_digest"], settings)
    with open(blobs.blob_path(run["outputs_digest"], settings)) as f:
        return [json.loads(line) for line in f if line.strip()]


def latest(ref: str, task: str | None = None, *, task_digest: str | None = None, data_digest: str | None = None,
           settings: Settings | None = None) -> dict | None:
    """The newest run of a version matching the given task name / digests, or None."""
    for r in reversed(runs(ref, task, settings)):
        if task_digest and r["task_digest"] != task_digest:
            continue
        if data_digest and r["data_digest"] != data_digest:
            continue
        return r
    return None


def summary(ref: str, settings: Settings | None = None) -> list[dict]:
    """What `ember models show` lists: the newest run per (task, task digest, data digest), without outputs.
    The registry's VersionInfo does not carry it (store/registry imports nothing from here); the CLI and
    the platform API add it to what they show."""
    newest: dict[tuple, dict] = {}
    for r in runs(ref, None, settings):
        newest[(r["task"], r["task_digest"], r["data_digest"])] = r
    return [{k: r[k] for k in ("id", "task", "task_digest", "data_digest", "metrics", "settings",
                               "outputs_digest", "created_at")} for r in newest.values()]
