"""API keys for `ember serve`, stored hashed in the registry database (table `api_keys`).

    ember keys create --name ci --scopes inference,admin    # prints the secret once
    ember keys list
    ember keys revoke KEY_ID

A secret is `ember-` + 32 random bytes (urlsafe base64). Only its sha256 is stored: a secret with 256 bits
of entropy needs no salt or slow hash, and sha256 lets the server find a key with one indexed lookup.
The key id (`key_<hex>`) is public and is what `list` and `revoke` use.
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

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "scopes": self.scopes, "active": self.active,
                "created_at": _iso(self.created_at), "revoked_at": _iso(self.revoked_at),
                "last_used_at": _iso(self.last_used_at)}


def _aware(t):
    return None if t is None else t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _iso(t):
    return None if t is None else _aware(t).isoformat()


def _info(row: db.ApiKey) -> KeyInfo:
    return KeyInfo(row.id, row.name, [s for s in row.scopes.split(",") if s], _aware(row.created_at),
                   _aware(row.revoked_at), _aware(row.last_used_at))


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


def create(name: str, scopes: str | list[str] = "inference", settings: Settings | None = None
           ) -> tuple[KeyInfo, str]:
    """Returns the new key and its secret; the secret is not stored and cannot be shown again."""
    name = (name or "").strip()
    if not name or len(name) > 128:
        raise InvalidRequest("a key needs a name of 1-128 characters", param="name")
    scope_list = parse_scopes(scopes)
    secret = PREFIX + secrets.token_urlsafe(32)
    row = db.ApiKey(id="key_" + secrets.token_hex(8), name=name, key_hash=hash_secret(secret),
                    scopes=",".join(scope_list))
    with db.session(settings) as s:
        s.add(row)
        s.flush()
        return _info(row), secret


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
        if row.revoked_at is None:
            row.revoked_at = db.utcnow()
        s.flush()
        return _info(row)


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
        if scope not in info.scopes and "admin" not in info.scopes:
            raise Forbidden(f"this API key lacks the {scope!r} scope", code="insufficient_scope")
        now = db.utcnow()
        if info.last_used_at is None or now - info.last_used_at > _TOUCH_EVERY:
            row.last_used_at = now
        return info
