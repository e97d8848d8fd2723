"""The job queue's tables: `jobs` (one row per job, its state machine) and `job_events` (append-only log).

    ember jobs list                        # reads these tables; works with or without a server
    ember worker                           # claims queued jobs from them

States: queued -> running -> succeeded | failed | cancelled. A worker claims a job with one conditional
UPDATE (`... WHERE id = ? AND state = 'queued'`): on SQLite (BEGIN IMMEDIATE) and PostgreSQL alike exactly
one claimer sees rowcount 1, so any number of workers on any number of replicas may share the table.
A running job carries its worker (`host:pid`), the child's process group and a heartbeat the worker renews;
`stale()` finds running jobs whose worker is gone so they can be resumed or failed (jobs/worker.py).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from sqlalchemy import JSON, Integer, String, Text, select, update
from sqlalchemy.orm import Mapped, mapped_column

from ember.config import Settings
from ember.errors import NotFound
from ember.store import db

TERMINAL = ("succeeded", "failed", "cancelled")


class Job(db.Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    spec: Mapped[dict] = mapped_column(JSON, default=dict)
    result: Mapped[dict] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the child's pid = its process group
    heartbeat_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=db.utcnow)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)


class JobEvent(db.Base):
    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(String(40), index=True)
    created_at: Mapped[datetime] = mapped_column(default=db.utcnow)
    level: Mapped[str] = mapped_column(String(16), default="info")
    type: Mapped[str] = mapped_column(String(32), default="message")  # message | metrics | checkpoint | state
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict] = mapped_column(JSON, default=dict)


def aware(d: datetime | None) -> datetime | None:
    """SQLite hands datetimes back without their zone; they were written in UTC."""
    return d.replace(tzinfo=UTC) if d is not None and d.tzinfo is None else d


def _ts(d: datetime | None) -> int | None:
    return int(aware(d).timestamp()) if d else None


def to_dict(j: Job) -> dict:
    return {"id": j.id, "kind": j.kind, "owner": j.owner, "state": j.state, "spec": j.spec or {},
            "result": j.result or {}, "error": j.error, "attempts": j.attempts,
            "cancel_requested": bool(j.cancel_requested), "worker": j.worker, "pid": j.pid,
            "created_at": _ts(j.created_at), "started_at": _ts(j.started_at), "finished_at": _ts(j.finished_at),
            "heartbeat_at": _ts(j.heartbeat_at)}


def event_dict(e: JobEvent) -> dict:
    return {"id": e.id, "job_id": e.job_id, "created_at": _ts(e.created_at), "level": e.level, "type": e.type,
            "message": e.message, "data": e.data or {}}


def create(kind: str, spec: dict, owner: str, *, job_id: str | None = None,
           settings: Settings | None = None) -> dict:
    with db.session(settings) as s:
        job = Job(id=job_id or f"job-{secrets.token_hex(12)}", kind=kind, owner=owner, state="queued", spec=spec,
                  result={})
        s.add(job)
        s.add(JobEvent(job_id=job.id, type="state", message=f"{kind} job queued", data={"state": "queued"}))
        s.flush()
        return to_dict(job)


def get(job_id: str, owner: str | None = None, settings: Settings | None = None) -> dict:
    with db.session(settings) as s:
        j = s.get(Job, job_id)
        if j is None or (owner is not None and j.owner != owner):
            raise NotFound(f"no job with id {job_id!r}", param="job_id")
        return to_dict(j)


def list_jobs(owner: str | None = None, kinds: tuple[str, ...] | None = None, state: str | None = None,
              limit: int = 100, settings: Settings | None = None) -> list[dict]:
    with db.session(settings) as s:
        q = select(Job).order_by(Job.created_at.desc(), Job.id.desc())
        if owner is not None:
            q = q.where(Job.owner == owner)
        if kinds:
            q = q.where(Job.kind.in_(kinds))
        if state:
            q = q.where(Job.state == state)
        return [to_dict(j) for j in s.scalars(q.limit(limit))]


def claim(worker: str, kinds: tuple[str, ...] | None = None, settings: Settings | None = None) -> dict | None:
    """Atomically take the oldest queued job (of `kinds`); None when there is none."""
    with db.session(settings) as s:
        q = select(Job.id).where(Job.state == "queued").order_by(Job.created_at, Job.id).limit(8)
        if kinds:
            q = q.where(Job.kind.in_(kinds))
        candidates = list(s.scalars(q))
    for job_id in candidates:
        now = db.utcnow()
        with db.session(settings) as s:
            n = s.execute(update(Job).where(Job.id == job_id, Job.state == "queued").values(
                state="running", worker=worker, pid=None, started_at=now, heartbeat_at=now,
                attempts=Job.attempts + 1)).rowcount
            if n == 1:
                s.add(JobEvent(job_id=job_id, type="state", message=f"running on {worker}",
                               data={"state": "running"}))
                s.flush()
                return to_dict(s.get(Job, job_id))
    return None


def set_pid(job_id: str, pid: int | None, settings: Settings | None = None) -> None:
    with db.session(settings) as s:
        s.execute(update(Job).where(Job.id == job_id).values(pid=pid))


def set_result(job_id: str, result: dict, settings: Settings | None = None) -> None:
    """Merge `result` into the job's result (the child reports what it made, e.g. fine_tuned_model)."""
    with db.session(settings) as s:
        j = s.get(Job, job_id)
        if j is not None:
            j.result = {**(j.result or {}), **result}


def heartbeat(worker: str, settings: Settings | None = None) -> list[dict]:
    """Renew the heartbeat of `worker`'s running jobs; returns them (with cancel_requested)."""
    with db.session(settings) as s:
        s.execute(update(Job).where(Job.worker == worker, Job.state == "running").values(heartbeat_at=db.utcnow()))
        return [to_dict(j) for j in s.scalars(select(Job).where(Job.worker == worker, Job.state == "running"))]


def finish(job_id: str, state: str, *, error: str | None = None, result: dict | None = None,
           worker: str | None = None, from_states: tuple[str, ...] = ("running", "queued"),
           settings: Settings | None = None) -> bool:
    """running (or queued) -> a terminal state; False if the job was already finished (or taken by another)."""
    assert state in TERMINAL
    with db.session(settings) as s:
        q = update(Job).where(Job.id == job_id, Job.state.in_(from_states))
        if worker is not None:
            q = q.where(Job.worker == worker)
        n = s.execute(q.values(state=state, error=error, finished_at=db.utcnow(), pid=None)).rowcount
        if n != 1:
            return False
        if result:
            j = s.get(Job, job_id)
            j.result = {**(j.result or {}), **result}
        s.add(JobEvent(job_id=job_id, type="state", level="error" if state == "failed" else "info",
                       message=f"job {state}" + (f": {error}" if error else ""), data={"state": state}))
        return True


def requeue(job_id: str, reason: str, worker: str | None = None, settings: Settings | None = None) -> bool:
    """running -> queued (to be resumed from its last checkpoint by the next worker)."""
    with db.session(settings) as s:
        q = update(Job).where(Job.id == job_id, Job.state == "running")
        if worker is not None:
            q = q.where(Job.worker == worker)
        n = s.execute(q.values(state="queued", worker=None, pid=None, heartbeat_at=None)).rowcount
        if n == 1:
            s.add(JobEvent(job_id=job_id, type="state", level="warning", message=reason,
                           data={"state": "queued", "resume": True}))
        return n == 1


def request_cancel(job_id: str, owner: str | None = None, settings: Settings | None = None) -> dict:
    """A queued job is cancelled at once; a running one is flagged for its worker, which kills its group."""
    if get(job_id, owner, settings)["state"] == "queued" and \
            finish(job_id, "cancelled", from_states=("queued",), settings=settings):
        return get(job_id, None, settings)
    with db.session(settings) as s:
        s.execute(update(Job).where(Job.id == job_id, Job.state == "running").values(cancel_requested=1))
    return get(job_id, None, settings)


def running(settings: Settings | None = None) -> list[dict]:
    with db.session(settings) as s:
        return [to_dict(j) for j in s.scalars(select(Job).where(Job.state == "running"))]


def add_event(job_id: str, message: str = "", *, type: str = "message", level: str = "info",
              data: dict | None = None, settings: Settings | None = None) -> None:
    with db.session(settings) as s:
        s.add(JobEvent(job_id=job_id, type=type, level=level, message=message[:4000], data=data or {}))


def add_events(job_id: str, events: list[dict], settings: Settings | None = None) -> None:
    if not events:
        return
    with db.session(settings) as s:
        for e in events:
            s.add(JobEvent(job_id=job_id, **e))


def events(job_id: str, after: int = 0, limit: int = 1000, type: str | None = None,
           settings: Settings | None = None) -> list[dict]:
    """Events in order (oldest first) with id > `after`."""
    with db.session(settings) as s:
        q = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after)
        if type:
            q = q.where(JobEvent.type == type)
        return [event_dict(e) for e in s.scalars(q.order_by(JobEvent.id).limit(limit))]
