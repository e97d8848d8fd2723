"""Who may talk to `ember serve` at the HTTP level: Host allow-list, Origin check, JSON-only bodies, and the
API key asked for before any body is read.

    ember serve                                        # Host must be localhost / 127.0.0.1 / [::1]
    ember serve --host 0.0.0.0 --allowed-hosts ember.internal,10.0.0.5 --allowed-origins https://app.example

- Host allow-list (DNS rebinding): a page on evil.example whose name was re-pointed at 127.0.0.1 reaches a
  local server with `Host: evil.example`. Bound to a loopback address, only loopback names are accepted;
  bound elsewhere, `--allowed-hosts` (default: any, with a warning at start) lists them. Refused: 400.
- Origin check (CSRF): a state-changing request (POST/PUT/PATCH/DELETE) carrying an `Origin` that is neither
  the server itself nor in `--allowed-origins` is refused with 403. CORS headers are only sent for
  `--allowed-origins` (none by default), through Starlette's CORSMiddleware.
- Bodies must be JSON (415 otherwise): `text/plain`, form and multipart bodies are what a web page can send
  cross-site without a preflight, so accepting them as JSON would let any page drive the API.
- When keys are on, a request to a protected route without any bearer token is refused (401) before its body
  is read, so an unauthenticated client cannot make the server buffer bodies (the full key check stays in
  `auth.require_scope`).
"""

import ipaddress
import json
import logging
from urllib.parse import urlsplit

from ember.server.console import is_console_path
from ember.server.errors import error_body

log = logging.getLogger("ember.server")
LOOPBACK_NAMES = ["localhost", "127.0.0.1", "::1"]
PUBLIC_PATHS = ("/health", "/ready")
# Multipart uploads (files_api) are taken with a bearer token only: a cross-site form cannot send one.
MULTIPART_PATHS = ("/v1/files",)
STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_allowed_hosts(bind_host: str, allowed: list[str] | None) -> list[str] | None:
    """The Host names to accept (lowercase, no port); None means any."""
    if allowed:
        names = [h.strip().lower().strip("[]") for h in allowed if h.strip()]
        return None if "*" in names else names
    if is_loopback(bind_host):
        return list(LOOPBACK_NAMES)
    log.warning("bound to %s without --allowed-hosts: any Host header is accepted; list the names clients use "
                "(--allowed-hosts) to refuse DNS-rebinding requests", bind_host)
    return None


def split_host(value: str) -> str:
    """'Example.com:8000' -> 'example.com'; '[::1]:8000' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value


def host_allowed(host: str, allowed: list[str] | None) -> bool:
    if allowed is None:
        return True
    for a in allowed:
        if a.startswith(".") and (host.endswith(a) or host == a[1:]):  # ".example.com": the domain and below
            return True
        if host == a:
            return True
    return False


def _is_json(content_type: bytes) -> bool:
    mime = content_type.split(b";")[0].strip().lower()
    return mime == b"application/json" or (mime.startswith(b"application/") and mime.endswith(b"+json"))


class RequestGuard:
    def __init__(self, app, allowed_hosts: list[str] | None, allowed_origins: list[str], auth=None):
        self.app, self.allowed_hosts, self.auth = app, allowed_hosts, auth
        self.allowed_origins = {o.rstrip("/").lower() for o in allowed_origins}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self.refusal(scope)
        if refusal is not None:
            status, message, type_, code = refusal
            scope.setdefault("state", {}).setdefault("log", {})["error"] = message
            data = json.dumps(error_body(message, type_, None, code)).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
            if status == 401:
                headers.append((b"www-authenticate", b"Bearer"))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": data})
            return
        return await self.app(scope, receive, send)

    def refusal(self, scope) -> tuple[int, str, str, str] | None:
        if scope.get("ember.internal"):  # the in-process batch runner (server/batch_runner.py): no network peer
            return None
        headers = {}
        for k, v in scope["headers"]:
            headers.setdefault(k, v)
        host = split_host(headers.get(b"host", b"").decode("latin-1"))
        if not host_allowed(host, self.allowed_hosts):
            return (400, f"Host {host[:100]!r} is not allowed on this server (see --allowed-hosts)",
                    "invalid_request_error", "host_not_allowed")
        method = scope["method"]
        # The web console (server/console) authenticates by its session cookie and checks a CSRF token on its
        # own form posts; the Origin check below still applies to it.
        console = is_console_path(scope["path"])
        if method in STATE_CHANGING:
            origin = headers.get(b"origin")
            raw_host = headers.get(b"host", b"").decode("latin-1").strip().lower()
            if origin is not None and not self._origin_ok(origin.decode("latin-1"), raw_host):
                return (403, "cross-origin request refused: this Origin is not in --allowed-origins",
                        "permission_error", "origin_not_allowed")
            has_body = headers.get(b"content-length", b"0") not in (b"0", b"") or b"transfer-encoding" in headers
            ctype = headers.get(b"content-type", b"")
            upload = (scope["path"] in MULTIPART_PATHS and ctype.lower().startswith(b"multipart/form-data")
                      and _has_bearer(headers.get(b"authorization", b"")))
            if (scope["path"] in MULTIPART_PATHS and ctype.lower().startswith(b"multipart/form-data")
                    and not upload and self.auth is not None and self.auth.enabled()):
                return (401, "missing API key: send 'Authorization: Bearer <key>'", "authentication_error",
                        "invalid_api_key")
            if has_body and not _is_json(ctype) and not console and not upload:
                return (415, "request bodies must be JSON: send 'Content-Type: application/json'",
                        "invalid_request_error", "unsupported_media_type")
        if (self.auth is not None and scope["path"] not in PUBLIC_PATHS and method != "OPTIONS" and not console
                and not _has_bearer(headers.get(b"authorization", b"")) and self.auth.enabled()):
            return (401, "missing API key: send 'Authorization: Bearer <key>'", "authentication_error",
                    "invalid_api_key")
        return None

    def _origin_ok(self, origin: str, raw_host: str) -> bool:
        o = origin.strip().rstrip("/").lower()
        if "*" in self.allowed_origins or o in self.allowed_origins:
            return True
        if o == "null":
            return False
        # Same origin: the page was served by this very server (whose Host is already allow-listed).
        return bool(raw_host) and urlsplit(o).netloc == raw_host


def _has_bearer(value: bytes) -> bool:
    scheme, _, token = value.decode("latin-1").partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())
