"""Usage and audit over HTTP.

    curl -H "Authorization: Bearer $KEY" localhost:8000/v1/usage                       # this key's usage
    curl -H "Authorization: Bearer $ADMIN_KEY" 'localhost:8000/api/usage?since=2026-11-01'   # every key
    curl -H "Authorization: Bearer $ADMIN_KEY" 'localhost:8000/api/audit?action=key.&limit=50'

Usage rows are per key, model and UTC day: requests, prompt_tokens, completion_tokens, total_tokens (the
same numbers the responses' `usage` carried). The audit log is newest first (store/audit.py).
"""

import re

from fastapi import APIRouter, Depends, Query, Request

from ember.errors import InvalidRequest
from ember.server.auth import require_scope

router = APIRouter()
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _day(value: str | None, param: str) -> str | None:
    if value is not None and not _DAY.match(value):
        raise InvalidRequest(f"{param} must be a date YYYY-MM-DD", param=param)
    return value


def _totals(rows: list[dict]) -> dict:
    keys = ("requests", "prompt_tokens", "completion_tokens", "total_tokens")
    return {k: sum(r[k] for r in rows) for k in keys}


@router.get("/v1/usage", dependencies=[Depends(require_scope("inference"))])
def own_usage(request: Request, since: str | None = Query(None, max_length=10),
              until: str | None = Query(None, max_length=10)):
    from ember.store import usage

    key = getattr(request.state, "key", None)
    rows = usage.report(request.app.state.settings, key_id=key.id if key else usage.NO_KEY,
                        since=_day(since, "since"), until=_day(until, "until"))
    return {"object": "list", "key_id": key.id if key else None, "data": rows, "total": _totals(rows),
            "limits": key.limits() if key else None}


@router.get("/api/usage", dependencies=[Depends(require_scope("admin"))])
def all_usage(request: Request, key_id: str | None = Query(None, max_length=64),
              model: str | None = Query(None, max_length=256), since: str | None = Query(None, max_length=10),
              until: str | None = Query(None, max_length=10)):
    from ember.store import usage

    rows = usage.report(request.app.state.settings, key_id=key_id, model=model, since=_day(since, "since"),
                        until=_day(until, "until"))
    return {"object": "list", "data": rows, "total": _totals(rows)}


@router.get("/api/audit", dependencies=[Depends(require_scope("admin"))])
def audit_log(request: Request, limit: int = Query(100, ge=1, le=1000), action: str | None = Query(None, max_length=64),
              actor: str | None = Query(None, max_length=160), before_id: int | None = Query(None, ge=1, lt=2**63)):
    from ember.store import audit

    return {"object": "list", "data": audit.entries(request.app.state.settings, limit=limit, action=action,
                                                     actor=actor, before_id=before_id)}
