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

`require_scope("admin")` accepts only keys with the admin scope; `require_scope("inference")` accepts
inference or admin keys. With keys off, both let every request through (a local, single-user server).
"""

import threading
import time

from fastapi import Request

from ember.errors import EmberError, Unauthorized
from ember.store import keys

TTL = 2.0


class Auth:
    def __init__(self, settings, require_key: bool = False):
        self.settings = settings
        self.require_key = require_key
        self._lock = threading.Lock()
        self._enabled: tuple[float, bool] = (0.0, False)
        self._checked: dict[tuple[str, str], tuple[float, EmberError | None]] = {}

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

    def check(self, secret: str | None, scope: str) -> None:
        """Raises Unauthorized/Forbidden unless `secret` is an active key with `scope` (cached for TTL)."""
        if not secret:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
        digest = keys.hash_secret(secret)
        now = time.monotonic()
        with self._lock:
            hit = self._checked.get((digest, scope))
        if hit is None or now - hit[0] >= TTL:
            try:
                keys.check(secret, scope, self.settings)
                err = None
            except EmberError as e:
                err = e
            with self._lock:
                if len(self._checked) > 10_000:  # bounded: random junk keys must not grow memory
                    self._checked.clear()
                self._checked[(digest, scope)] = (now, err)
            hit = (now, err)
        if hit[1] is not None:
            raise hit[1]


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def require_scope(scope: str = "inference"):
    """A FastAPI dependency: the request must carry an active key with `scope` whenever keys are on.
    Plain `def`, so FastAPI runs it in its thread pool and a database lookup never blocks the event loop."""

    def dependency(request: Request) -> None:
        if request.scope.get("ember.internal"):
            return  # an in-process call (a batch job's line, authorised when the job was created)
        auth: Auth = request.app.state.auth
        if auth.enabled():
            auth.check(bearer(request), scope)
            request.state.authenticated = True

    dependency.__name__ = f"require_scope_{scope}"
    return dependency
