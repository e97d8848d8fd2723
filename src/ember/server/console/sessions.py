"""Console sign-in: server-side sessions behind an httpOnly, SameSite=Strict cookie, and CSRF tokens.

    ember keys create --name me --scopes admin     # then open http://127.0.0.1:8000/ui and paste the key

The API key a person signs in with stays on the server, in this process's session table; the browser only
holds a random session id (`ember_session`, httpOnly so page scripts cannot read it, SameSite=Strict so other
sites' pages do not send it). Every state-changing console request must also carry the session's CSRF token
(a form field `csrf_token` or the `X-CSRF-Token` header of the console's fetch calls), and a request whose
Origin is not this server is refused. Sessions are in memory: a restart signs everyone out. The key is
checked again on every request (through the server's `Auth`, cached for a few seconds), so a revoked key ends
its sessions.
"""

import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fastapi import Request

from ember.errors import EmberError

COOKIE = "ember_session"
IDLE_SECONDS = 12 * 3600
MAX_SESSIONS = 10_000  # bounded: sign-ins cannot grow memory without limit


@dataclass
class Session:
    id: str
    key: str = field(repr=False)
    name: str
    scopes: list[str]
    csrf: str
    seen: float
    flash: list = field(default_factory=list)  # (message, error) shown once on the next page
    new_secret: dict | None = field(default=None, repr=False)  # a key just created: shown once, then dropped

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes


class SessionTable:
    def __init__(self):
        self._lock = threading.Lock()
        self._rows: dict[str, Session] = {}

    def create(self, key: str, name: str, scopes: list[str]) -> Session:
        s = Session(secrets.token_urlsafe(32), key, name, scopes, secrets.token_urlsafe(32), time.monotonic())
        with self._lock:
            if len(self._rows) >= MAX_SESSIONS:
                oldest = sorted(self._rows.values(), key=lambda r: r.seen)[: MAX_SESSIONS // 10]
                for r in oldest:
                    self._rows.pop(r.id, None)
            self._rows[s.id] = s
        return s

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        now = time.monotonic()
        with self._lock:
            s = self._rows.get(sid)
            if s is None:
                return None
            if now - s.seen > IDLE_SECONDS:
                self._rows.pop(sid, None)
                return None
            s.seen = now
            return s

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._rows.pop(sid or "", None)


def table(request_or_app) -> SessionTable:
    app = getattr(request_or_app, "app", request_or_app)
    st = app.state
    if not hasattr(st, "console_sessions"):
        st.console_sessions = SessionTable()
    return st.console_sessions


def current(request: Request) -> Session | None:
    """The signed-in session, or None (no cookie, expired, or its key no longer valid)."""
    s = table(request).get(request.cookies.get(COOKIE))
    if s is None:
        return None
    try:
        request.app.state.auth.check(s.key, "inference")
    except EmberError:
        table(request).drop(s.id)
        return None
    return s


def set_cookie(response, request: Request, s: Session) -> None:
    response.set_cookie(COOKIE, s.id, httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https", max_age=IDLE_SECONDS)


def clear_cookie(response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from a page of another origin. Browsers send Origin on
    every POST (and on fetch), and Sec-Fetch-Site on all requests; either naming another site refuses it."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    if origin == "null":
        return False
    return urlsplit(origin).netloc.lower() == request.headers.get("host", "").lower()


def csrf_ok(request: Request, s: Session, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(token, s.csrf) and same_origin(request)
