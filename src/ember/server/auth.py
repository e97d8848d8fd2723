"""API-key authentication for `ember serve`.

    ember keys create --name app            # from then on every route but /health and /ready needs the key
    curl -H "Authorization: Bearer ember-..." localhost:8000/v1/models

Keys are on when the server was started with --require-key or when any key exists in the registry database,
revoked ones included (so revoking the last key does not open the server). This is checked every `TTL`
seconds: a key created while the server runs switches auth on without a restart, and a revoked key stops
working within `TTL` seconds.

Routers add auth as a dependency. Other modules use the same one, e.g. the platform API:

    from ember.server.auth import require_scope
    router = APIRouter(prefix="/api", dependencies=[Depends(require_scope("admin"))])

`require_scope("admin")` accepts only keys with the admin scope, and always needs one: with no key created
yet, admin routes are refused with how to create one (`ember keys create --name admin --scopes admin`).
`require_scope("inference")` accepts inference or admin keys, and with keys off lets every request through
(a local, single-user server). The key behind a request is `request.state.key` (a `keys.KeyInfo`, None when
keys are off). Failed authentications are written to the audit log (at most a few per second).
"""

import logging
import threading
import time

from fastapi import Request

from ember.errors import EmberError, Forbidden, Unauthorized
from ember.store import keys

TTL = 2.0
log = logging.getLogger("ember.server")
NO_ADMIN_KEY = ("admin routes need an admin API key and none exists yet: create one with "
                "`ember keys create --name admin --scopes admin`, then send 'Authorization: Bearer <key>'")


class Auth:
    def __init__(self, settings, require_key: bool = False):
        self.settings = settings
        self.require_key = require_key
        self._lock = threading.Lock()
        self._enabled: tuple[float, bool] = (0.0, False)
        self._checked: dict[tuple[str, str], tuple[float, object]] = {}
        self._audit_at, self._audit_dropped = 0.0, 0

    def enabled(self) -> bool:
        if self.require_key:
            return True
        now = time.monotonic()
        with self._lock:
            at, on = self._enabled
            if now - at < TTL:
                return on
        on = keys.any_exist(self.settings)
        with self._lock:
            self._enabled = (now, on)
        return on

    def check(self, secret: str | None, scope: str, client: str = "") -> "keys.KeyInfo":
        """The key behind `secret`; raises Unauthorized/Forbidden unless it is an active key with `scope`
        (cached for TTL)."""
        if not secret:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
        digest = keys.hash_secret(secret)
        now = time.monotonic()
        with self._lock:
            hit = self._checked.get((digest, scope))
        if hit is None or now - hit[0] >= TTL:
            try:
                result = keys.check(secret, scope, self.settings)
            except EmberError as e:
                result = e
                self._audit_failure(e, secret, client)
            with self._lock:
                if len(self._checked) > 10_000:  # bounded: random junk keys must not grow memory
                    self._checked.clear()
                self._checked[(digest, scope)] = (now, result)
            hit = (now, result)
        if isinstance(hit[1], EmberError):
            raise hit[1]
        return hit[1]

    def _audit_failure(self, e: EmberError, secret: str, client: str) -> None:
        """One audit row per failure, at most 5 a second (a flood of junk keys must not become a flood of
        database writes); the rows written say how many were dropped before them."""
        from ember.store import audit

        now = time.monotonic()
        with self._lock:
            if now - self._audit_at < 0.2:
                self._audit_dropped += 1
                return
            self._audit_at, dropped, self._audit_dropped = now, self._audit_dropped, 0
        try:
            audit.record("auth.failed", client, actor="anonymous",
                         detail={"reason": e.message, "code": e.code, "key_prefix": secret[:10],
                                 "dropped_before": dropped}, settings=self.settings)
        except Exception:  # noqa: BLE001 - auditing must not turn a 401 into a 500
            log.warning("could not write the audit log", exc_info=True)


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def require_scope(scope: str = "inference", always: bool = True):
    """A FastAPI dependency: the request must carry an active key with `scope` whenever keys are on.
    always=False: an admin scope only once keys are on (/metrics of a local server stays open).
    Plain `def`, so FastAPI runs it in its thread pool and a database lookup never blocks the event loop."""

    def dependency(request: Request) -> None:
        if request.scope.get("ember.internal"):
            return  # an in-process call (a batch job's line, authorised when the job was created)
        auth: Auth = request.app.state.auth
        request.state.key = None
        if auth.enabled():
            client = request.client.host if request.client else ""
            request.state.key = auth.check(bearer(request), scope, client)
            request.state.authenticated = True
        elif scope == "admin" and always:
            raise Forbidden(NO_ADMIN_KEY, code="admin_key_required")

    dependency.__name__ = f"require_scope_{scope}"
    return dependency
