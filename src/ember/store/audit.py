"""The audit log: an append-only table of who did what to the registry and the keys, with before and after.

    ember audit --limit 50                          # newest first
    curl -H "Authorization: Bearer $ADMIN_KEY" 'localhost:8000/api/audit?action=key.'

Actions: key.create/update/revoke, alias.move/promote/promote_refused, model.import, model.delete,
eval.run, auth.failed, model.load/load_failed/unload (a running server's /api/models). The actor is the API
key id when a request did it (the server sets it with `acting_as`), else `cli:<OS user>` (or $EMBER_ACTOR).
Rows are only ever inserted: nothing in Ember updates or deletes them.
"""

import contextvars
import getpass
import os
from contextlib import contextmanager
from datetime import timezone

from sqlalchemy import select

from ember.config import Settings
from ember.store import db

_actor: contextvars.ContextVar[str | None] = contextvars.ContextVar("ember_actor", default=None)


def current_actor() -> str:
    who = _actor.get()
    if who:
        return who
    try:
        user = os.environ.get("EMBER_ACTOR") or getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name (containers): still record the entry
        user = "unknown"
    return f"cli:{user}"


@contextmanager
def acting_as(actor: str | None):
    """Entries written inside are attributed to `actor` (e.g. a key id)."""
    token = _actor.set(actor)
    try:
        yield
    finally:
        _actor.reset(token)


def add(s, action: str, target: str = "", *, before=None, after=None, detail: dict | None = None,
        actor: str | None = None) -> None:
    """Appends an entry inside an open session `s` (so it commits or rolls back with the change itself)."""
    s.add(db.AuditEntry(actor=(actor or current_actor())[:160], action=action, target=str(target)[:256],
                        before=before, after=after, detail=detail or {}))


def record(action: str, target: str = "", *, before=None, after=None, detail: dict | None = None,
           actor: str | None = None, settings: Settings | None = None) -> None:
    with db.session(settings) as s:
        add(s, action, target, before=before, after=after, detail=detail, actor=actor)


def entries(settings: Settings | None = None, *, limit: int = 100, action: str | None = None,
            actor: str | None = None, before_id: int | None = None) -> list[dict]:
    """Newest first. `action` matches a prefix ("key." for every key change); before_id pages backwards."""
    limit = max(1, min(int(limit), 1000))
    with db.session(settings) as s:
        q = select(db.AuditEntry).order_by(db.AuditEntry.id.desc()).limit(limit)
        if action:
            q = q.where(db.AuditEntry.action.startswith(action, autoescape=True))
        if actor:
            q = q.where(db.AuditEntry.actor == actor)
        if before_id is not None:
            q = q.where(db.AuditEntry.id < before_id)
        return [{"id": r.id, "at": (r.at if r.at.tzinfo else r.at.replace(tzinfo=timezone.utc)).isoformat(),
                 "actor": r.actor, "action": r.action, "target": r.target, "before": r.before, "after": r.after,
                 "detail": r.detail} for r in s.scalars(q)]
