"""How the console reaches the API: always through the server's own routes, as the signed-in key.

    page handler:  status, body = await call(request, "GET", "/api/models")
    browser JS:    fetch("/ui/proxy/v1/chat/completions", {headers: {"X-CSRF-Token": token}, ...})

`call` runs a request through the whole app in-process (httpx's ASGI transport: the same middlewares, auth,
limits, audit and usage as any client) with the session's key as the bearer token. `Proxy` does the same for
the browser, streaming: it checks the session cookie and the CSRF header, swaps them for the session's key
and hands the request to the app unchanged, so Server-Sent Events and aborts work as for any client.
"""

import json

import httpx
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from ember.server.console import sessions
from ember.server.errors import error_body

PROXIED = ("/v1/", "/api/", "/metrics")
PREFIX = "/ui/proxy"


async def call(request: Request, method: str, path: str, *, json_body=None, files=None, data=None,
               params=None) -> tuple[int, dict | str]:
    """(status, JSON body or text) of `method path` run through the app as the signed-in key."""
    s = await run_in_threadpool(sessions.current, request)
    headers = {"host": request.headers.get("host", "127.0.0.1"), "x-ember-console": "1"}
    if s is not None:
        headers["authorization"] = f"Bearer {s.key}"
    # An unexpected error in a route comes back as its 500 response (shown on the page), not as an exception.
    transport = httpx.ASGITransport(app=request.app, client=("127.0.0.1", 0), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=f"{request.url.scheme}://{headers['host']}",
                                 timeout=None) as client:
        r = await client.request(method, path, json=json_body, files=files, data=data, params=params,
                                 headers=headers)
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, r.text


def error_message(body) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message") or body["error"])
    return str(body)[:2000]


async def _refuse(send, status: int, message: str, code: str) -> None:
    data = json.dumps(error_body(message, "permission_error" if status == 403 else "authentication_error",
                                 None, code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


class Proxy:
    """ASGI app mounted at /ui/proxy: /ui/proxy/v1/... -> /v1/... as the session's key."""

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        request = Request(scope)
        path = scope["path"]
        rest = path[path.find(PREFIX) + len(PREFIX):] if PREFIX in path else path
        s = await run_in_threadpool(sessions.current, request)
        if s is None:
            return await _refuse(send, 401, "not signed in to the console", "not_signed_in")
        if not sessions.csrf_ok(request, s, request.headers.get("x-csrf-token")):
            return await _refuse(send, 403, "missing or wrong CSRF token, or a request from another origin",
                                 "csrf_failed")
        if not rest.startswith(PROXIED):
            return await _refuse(send, 403, f"the console does not forward {rest[:100]!r}", "not_forwarded")
        drop = {b"cookie", b"authorization", b"x-csrf-token"}
        headers = [(k, v) for k, v in scope["headers"] if k not in drop]
        headers.append((b"authorization", f"Bearer {s.key}".encode()))
        inner = {**scope, "path": rest, "raw_path": rest.encode(), "root_path": "", "headers": headers, "state": {}}
        await scope["app"](inner, receive, send)
