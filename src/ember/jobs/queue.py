"""Submitting, watching and cancelling jobs: what the HTTP routes and `ember jobs` call.

    ember jobs list / show JOB / logs JOB / cancel JOB
    curl -X POST localhost:8000/api/jobs --json \
         '{"kind": "eval", "model": "smollm2-135m-instruct", "task": "builtin:generate"}'

`submit` checks the request for its kind (jobs/kinds.py) before anything is queued, so a job that cannot
run is a 400 at once. `cancel` cancels a queued job at once; a running job is flagged and its worker kills
its process group within a second or two; `cancel(wait=...)` waits for that outcome.
"""

from __future__ import annotations

import time

from ember.jobs import kinds
from ember.store import jobs


def submit(kind: str, spec: dict, owner: str, *, job_id: str | None = None, settings=None) -> dict:
    spec = kinds.check(kind, dict(spec), owner, settings)
    return jobs.create(kind, spec, owner, job_id=job_id, settings=settings)


def cancel(job_id: str, owner: str | None = None, *, wait: float = 0.0, settings=None) -> dict:
    job = jobs.request_cancel(job_id, owner, settings)
    deadline = time.monotonic() + wait
    while job["state"] not in jobs.TERMINAL and time.monotonic() < deadline:
        time.sleep(0.2)
        job = jobs.get(job_id, None, settings)
    return job


def checkpoints(job_id: str, settings=None) -> list[dict]:
    """Checkpoint events (newest first), each with the metrics recorded at its step."""
    metrics = {}
    for e in jobs.events(job_id, type="metrics", settings=settings, limit=100_000):
        metrics.setdefault(e["data"].get("step"), {}).update(e["data"])
    out = []
    for e in jobs.events(job_id, type="checkpoint", settings=settings, limit=100_000):
        step = e["data"].get("step")
        out.append({**e, "step": step, "metrics": metrics.get(step, {"step": step})})
    return out[::-1]
