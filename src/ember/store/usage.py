"""Usage counters in the registry database: per key, model and day (reporting and budgets), and per key and
minute (rpm/tpm). Kept in the database so every server replica sharing it sees the same counts.

    curl -H "Authorization: Bearer $ADMIN_KEY" 'localhost:8000/api/usage?key_id=key_0123'
    curl -H "Authorization: Bearer $KEY" localhost:8000/v1/usage

The server (server/limits.py) calls `start_request` when it admits a request and `add_tokens` as tokens are
produced (streamed ones in small batches). Writes are single-row upserts in one short transaction.
"""

import time
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select

from ember.config import Settings
from ember.store import db

NO_KEY = "-"  # usage while keys are off
_KEEP_MINUTES = 10  # rate windows older than this are deleted when new ones are written


def _minute(now: float | None = None) -> int:
    return int((now or time.time()) // 60)


def _day(now: float | None = None) -> str:
    return datetime.fromtimestamp(now or time.time(), timezone.utc).strftime("%Y-%m-%d")


def _bump(s, model, keys: dict, **inc) -> None:
    # One upsert: replicas counting the same key in the same minute never lose the row's first insert.
    db.upsert_add(s, model, keys, **inc)


def window(key_id: str, settings: Settings | None = None, now: float | None = None) -> tuple[int, int]:
    """(requests, tokens) of `key_id` in the current minute."""
    with db.session(settings) as s:
        row = s.get(db.RateWindow, (key_id, _minute(now)))
        return (row.requests, row.tokens) if row else (0, 0)


class _Refused(Exception):
    pass


def take_request(key_id: str, model: str, rpm: int | None, tpm: int | None, settings: Settings | None = None,
                 now: float | None = None) -> tuple[str | None, int, int]:
    """Count one request of `key_id` unless its minute is full: -> (None or "rpm"/"tpm", requests before this
    one, tokens this minute). The count and the check are one upsert's result, so replicas sharing the
    database admit at most `rpm` requests per minute between them; a refused request is not counted."""
    m = _minute(now)
    try:
        with db.session(settings) as s:
            reqs, toks = db.upsert_add(s, db.RateWindow, {"key_id": key_id, "minute": m}, requests=1, tokens=0)
            refused = "rpm" if rpm and reqs > rpm else "tpm" if tpm and toks >= tpm else None
            if refused:
                raise _Refused(refused, reqs - 1, toks)  # rolls the count back
            _bump(s, db.UsageDaily, {"key_id": key_id, "model": model, "day": _day(now)}, requests=1,
                  prompt_tokens=0, completion_tokens=0)
            if m % 5 == 0:
                s.execute(db.RateWindow.__table__.delete().where(db.RateWindow.minute < m - _KEEP_MINUTES))
            return None, reqs - 1, toks
    except _Refused as e:
        return e.args


def start_request(key_id: str, model: str, settings: Settings | None = None, now: float | None = None) -> None:
    with db.session(settings) as s:
        m = _minute(now)
        _bump(s, db.RateWindow, {"key_id": key_id, "minute": m}, requests=1, tokens=0)
        _bump(s, db.UsageDaily, {"key_id": key_id, "model": model, "day": _day(now)}, requests=1,
              prompt_tokens=0, completion_tokens=0)
        if m % 5 == 0:
            s.execute(db.RateWindow.__table__.delete().where(db.RateWindow.minute < m - _KEEP_MINUTES))


def add_tokens(key_id: str, model: str, prompt: int, completion: int, settings: Settings | None = None,
               now: float | None = None) -> None:
    if prompt <= 0 and completion <= 0:
        return
    with db.session(settings) as s:
        _bump(s, db.RateWindow, {"key_id": key_id, "minute": _minute(now)}, requests=0, tokens=prompt + completion)
        _bump(s, db.UsageDaily, {"key_id": key_id, "model": model, "day": _day(now)}, requests=0,
              prompt_tokens=prompt, completion_tokens=completion)


def period_start(period: str | None, now: datetime | None = None) -> str | None:
    """First day (YYYY-MM-DD) of the budget period containing now; None for 'total'."""
    now = now or datetime.now(timezone.utc)
    if period == "day":
        return now.strftime("%Y-%m-%d")
    if period in (None, "month"):
        return now.strftime("%Y-%m-01")
    return None


def period_end(period: str | None, now: datetime | None = None) -> datetime | None:
    now = now or datetime.now(timezone.utc)
    if period == "day":
        return (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    if period in (None, "month"):
        first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        return (first + timedelta(days=32)).replace(day=1)
    return None


def tokens_since(key_id: str, day: str | None, settings: Settings | None = None) -> int:
    with db.session(settings) as s:
        q = select(func.coalesce(func.sum(db.UsageDaily.prompt_tokens + db.UsageDaily.completion_tokens), 0)
                   ).where(db.UsageDaily.key_id == key_id)
        if day is not None:
            q = q.where(db.UsageDaily.day >= day)
        return int(s.scalar(q) or 0)


def report(settings: Settings | None = None, *, key_id: str | None = None, model: str | None = None,
           since: str | None = None, until: str | None = None) -> list[dict]:
    """Rows per key, model and day (oldest first), each with requests and token counts."""
    with db.session(settings) as s:
        q = select(db.UsageDaily).order_by(db.UsageDaily.day, db.UsageDaily.key_id, db.UsageDaily.model)
        if key_id is not None:
            q = q.where(db.UsageDaily.key_id == key_id)
        if model is not None:
            q = q.where(db.UsageDaily.model == model)
        if since is not None:
            q = q.where(db.UsageDaily.day >= since)
        if until is not None:
            q = q.where(db.UsageDaily.day <= until)
        return [{"key_id": r.key_id, "model": r.model, "day": r.day, "requests": r.requests,
                 "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                 "total_tokens": r.prompt_tokens + r.completion_tokens} for r in s.scalars(q)]
