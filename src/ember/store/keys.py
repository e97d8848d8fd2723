"""API keys for `ember serve`, stored hashed in the registry database (table `api_keys`).

    ember keys create --name ci --scopes inference,admin    # prints the secret once
    ember keys create --name team-a --rpm 60 --tpm 20000 --max-parallel 4 --budget 1000000 --budget-period month \
        --expires 2026-12-31 --models smollm2-135m-instruct
    ember keys update KEY_ID --rpm 120 --models ''          # '' clears a list; 0 clears a number
    ember keys show KEY_ID
    ember keys list
    ember keys revoke KEY_ID

A secret is `ember-` + 32 random bytes (urlsafe base64). Only its sha256 is stored: a secret with 256 bits
of entropy needs no salt or slow hash, and sha256 lets the server find a key with one indexed lookup.
The key id (`key_<hex>`) is public and is what `list` and `revoke` use.

Limits (None: unlimited) are enforced by the server (server/limits.py) with counters in this database
(store/usage.py), so they hold across replicas sharing it. Every change is written to the audit log.
"""

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from ember.config import Settings
from ember.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from ember.store import db

SCOPES = ("inference", "admin")
PERIODS = ("day", "month", "total")
LIMIT_FIELDS = ("rpm", "tpm", "max_parallel", "budget_tokens", "budget_period", "expires_at", "models")
PREFIX = "ember-"
# last_used_at is a write; once a minute per key is plenty and keeps the hot path read-only.
_TOUCH_EVERY = timedelta(minutes=1)


@dataclass
class KeyInfo:
    id: str
    name: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    budget_tokens: int | None = None
    budget_period: str | None = None
    expires_at: datetime | None = None
    models: list[str] | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and db.utcnow() >= self.expires_at

    def limits(self) -> dict:
        return {"rpm": self.rpm, "tpm": self.tpm, "max_parallel": self.max_parallel,
                "budget_tokens": self.budget_tokens, "budget_period": self.budget_period,
                "expires_at": _iso(self.expires_at), "models": self.models}

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "scopes": self.scopes, "active": self.active,
                "created_at": _iso(self.created_at), "revoked_at": _iso(self.revoked_at),
                "last_used_at": _iso(self.last_used_at), **self.limits()}


def _aware(t):
    return None if t is None else t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _iso(t):
    return None if t is None else _aware(t).isoformat()


def _info(row: db.ApiKey) -> KeyInfo:
    return KeyInfo(row.id, row.name, [s for s in row.scopes.split(",") if s], _aware(row.created_at),
                   _aware(row.revoked_at), _aware(row.last_used_at), row.rpm, row.tpm, row.max_parallel,
                   row.budget_tokens, row.budget_period, _aware(row.expires_at),
                   list(row.models) if row.models else None)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_scopes(scopes: str | list[str]) -> list[str]:
    items = scopes.split(",") if isinstance(scopes, str) else list(scopes)
    items = sorted({s.strip() for s in items if s.strip()})
    bad = [s for s in items if s not in SCOPES]
    if bad or not items:
        raise InvalidRequest(f"unknown scope(s) {', '.join(bad) or '(none)'}; use {', '.join(SCOPES)}",
                             param="scopes")
    return items


def parse_expiry(value) -> datetime | None:
    """'2026-12-31', an ISO time, or a duration '30d' / '12h' / '90m' from now; '' or None: never."""
    if value is None or value == "" or isinstance(value, datetime):
        return _aware(value) if isinstance(value, datetime) else None
    text = str(value).strip()
    units = {"d": "days", "h": "hours", "m": "minutes"}
    if text[:-1].isdigit() and text[-1:] in units:
        return db.utcnow() + timedelta(**{units[text[-1]]: int(text[:-1])})
    try:
        return _aware(datetime.fromisoformat(text))
    except ValueError:
        raise InvalidRequest(f"invalid expiry {text!r}: use a date (2026-12-31), an ISO time or 30d/12h/90m",
                             param="expires") from None


def _limits(fields: dict) -> dict:
    """Validated limit columns from keyword arguments; 0 or '' clears a limit (None leaves it unchanged)."""
    out = {}
    for k in ("rpm", "tpm", "max_parallel", "budget_tokens"):
        if k in fields and fields[k] is not None:
            v = int(fields[k])
            if v < 0 or v >= 2**62:
                raise InvalidRequest(f"{k} must be a non-negative integer (0: unlimited)", param=k)
            out[k] = v or None
    if fields.get("budget_period") is not None:
        period = fields["budget_period"] or None
        if period is not None and period not in PERIODS:
            raise InvalidRequest(f"budget period must be one of {', '.join(PERIODS)}", param="budget_period")
        out["budget_period"] = period
    if fields.get("expires_at") is not None:
        out["expires_at"] = parse_expiry(fields["expires_at"])
    if fields.get("models") is not None:
        items = fields["models"].split(",") if isinstance(fields["models"], str) else list(fields["models"])
        out["models"] = sorted({m.strip() for m in items if m.strip()}) or None
    return out


def create(name: str, scopes: str | list[str] = "inference", settings: Settings | None = None,
           **limits) -> tuple[KeyInfo, str]:
    """Returns the new key and its secret; the secret is not stored and cannot be shown again.
    limits: rpm, tpm, max_parallel, budget_tokens, budget_period, expires_at, models (see LIMIT_FIELDS)."""
    from ember.store import audit

    name = (name or "").strip()
    # Printable only: PostgreSQL refuses NUL in text, and a control character would garble `ember keys list`.
    if not name or len(name) > 128 or not name.isprintable():
        raise InvalidRequest("a key needs a name of 1-128 printable characters", param="name")
    scope_list = parse_scopes(scopes)
    values = _limits(limits)
    if values.get("budget_tokens") and not values.get("budget_period"):
        values["budget_period"] = "month"
    secret = PREFIX + secrets.token_urlsafe(32)
    row = db.ApiKey(id="key_" + secrets.token_hex(8), name=name, key_hash=hash_secret(secret),
                    scopes=",".join(scope_list), **values)
    with db.session(settings) as s:
        s.add(row)
        s.flush()
        info = _info(row)
        audit.add(s, "key.create", info.id, after=info.to_dict())
        return info, secret


def update(key_id: str, settings: Settings | None = None, scopes: str | None = None, **limits) -> KeyInfo:
    """Changes a key's scopes and limits; servers apply them within a few seconds."""
    from ember.store import audit

    values = _limits(limits)
    with db.session(settings) as s:
        row = s.get(db.ApiKey, key_id)
        if row is None:
            raise NotFound(f"API key {key_id!r} not found (see `ember keys list`)")
        before = _info(row).to_dict()
        if scopes is not None:
            row.scopes = ",".join(parse_scopes(scopes))
        for k, v in values.items():
            setattr(row, k, v)
        s.flush()
        info = _info(row)
        audit.add(s, "key.update", key_id, before=before, after=info.to_dict())
        return info


def get(key_id: str, settings: Settings | None = None) -> KeyInfo:
    with db.session(settings) as s:
        row = s.get(db.ApiKey, key_id)
        if row is None:
            raise NotFound(f"API key {key_id!r} not found (see `ember keys list`)")
        return _info(row)


def list_keys(settings: Settings | None = None, include_revoked: bool = True) -> list[KeyInfo]:
    with db.session(settings) as s:
        q = select(db.ApiKey).order_by(db.ApiKey.created_at, db.ApiKey.id)
        if not include_revoked:
            q = q.where(db.ApiKey.revoked_at.is_(None))
        return [_info(r) for r in s.scalars(q)]


def revoke(key_id: str, settings: Settings | None = None) -> KeyInfo:
    with db.session(settings) as s:
        row = s.get(db.ApiKey, key_id)
        if row is None:
            raise NotFound(f"API key {key_id!r} not found (see `ember keys list`)")
        before = _info(row).to_dict()
        if row.revoked_at is None:
            row.revoked_at = db.utcnow()
        s.flush()
        info = _info(row)
        from ember.store import audit

        audit.add(s, "key.revoke", key_id, before=before, after=info.to_dict())
        return info


def any_exist(settings: Settings | None = None) -> bool:
    """Whether any key was ever created. Revoked keys count: revoking the last key must not open the server."""
    with db.session(settings) as s:
        return s.scalar(select(db.ApiKey.id).limit(1)) is not None


def check(secret: str | None, scope: str = "inference", settings: Settings | None = None) -> KeyInfo:
    """The active key behind `secret`, if it has `scope` (admin implies inference); else Unauthorized or
    Forbidden. Never says whether a key exists but was revoked: both are just 'invalid'."""
    if not secret:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    with db.session(settings) as s:
        row = s.scalar(select(db.ApiKey).where(db.ApiKey.key_hash == hash_secret(secret)))
        if row is None or row.revoked_at is not None:
            raise Unauthorized("invalid API key", code="invalid_api_key")
        info = _info(row)
        if info.expired:
            raise Unauthorized(f"this API key expired at {_iso(info.expires_at)}; ask for a new key or an "
                               "extension (`ember keys update KEY_ID --expires ...`)", code="key_expired")
        if scope not in info.scopes and "admin" not in info.scopes:
            raise Forbidden(f"this API key lacks the {scope!r} scope", code="insufficient_scope")
        now = db.utcnow()
        if info.last_used_at is None or now - info.last_used_at > _TOUCH_EVERY:
            row.last_used_at = now
        return info
