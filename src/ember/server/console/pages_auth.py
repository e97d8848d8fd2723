"""Sign-in, sign-out, the first-run page and the refusal page of the console.

    GET  /ui/signin      the key form (or, with no key created yet, the first-run page, to local clients only)
    POST /ui/signin      key -> session cookie; POST /ui/signout ends the session

The sign-in form is protected against login CSRF by a double-submit token: a random value in a short-lived
httpOnly cookie that the form must repeat, plus the same-origin check.
"""

import hmac
import ipaddress
import secrets
from urllib.parse import unquote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from ember.errors import EmberError
from ember.server.console import sessions, web

router = APIRouter(include_in_schema=False)
PRE = "ember_signin"


def _local(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in ("localhost", "testclient")


def _next(value: str | None) -> str:
    value = unquote(value or "")
    # Only a path of this console: never an absolute URL or a scheme-relative one (open redirect).
    return value if value.startswith("/ui") and not value.startswith("//") else "/ui/chat"


def _no_keys(request: Request) -> bool:
    from ember.store import keys

    return not request.app.state.auth.require_key and not keys.any_exist(request.app.state.settings)


@router.get("/ui")
async def home(request: Request):
    s = await run_in_threadpool(sessions.current, request)
    return RedirectResponse("/ui/chat" if s else "/ui/signin", status_code=303)


@router.get("/ui/signin")
async def signin_page(request: Request, next: str | None = None, error: str | None = None):
    s = await run_in_threadpool(sessions.current, request)
    if s is not None:
        return RedirectResponse(_next(next), status_code=303)
    if await run_in_threadpool(_no_keys, request):
        return web.render(request, "firstrun.html", None, status=200 if _local(request) else 403,
                          local=_local(request))
    token = secrets.token_urlsafe(24)
    resp = web.render(request, "signin.html", None, status=401 if error else 200, pre=token, next=_next(next),
                      error=error)
    resp.set_cookie(PRE, token, httponly=True, samesite="strict", path="/ui/signin", max_age=3600,
                    secure=request.url.scheme == "https")
    return resp


def _check(request: Request, secret: str):
    from ember.store import keys

    return keys.check(secret, "inference", request.app.state.settings)


@router.post("/ui/signin")
async def signin(request: Request):
    data = await request.form()
    pre = request.cookies.get(PRE) or ""
    nxt = _next(data.get("next"))
    if not (pre and hmac.compare_digest(pre, str(data.get("csrf_token") or "")) and sessions.same_origin(request)):
        return await signin_page(request, nxt, "The form expired or came from another site; sign in again.")
    secret = str(data.get("key") or "").strip()
    try:
        info = await run_in_threadpool(_check, request, secret)
    except EmberError as e:
        return await signin_page(request, nxt, f"{e.message}. Paste the whole key (ember-...), as printed by "
                                               "`ember keys create`.")
    s = sessions.table(request).create(secret, info.name, list(info.scopes))
    resp = RedirectResponse(nxt, status_code=303)
    sessions.set_cookie(resp, request, s)
    resp.delete_cookie(PRE, path="/ui/signin")
    return resp


@router.post("/ui/signout")
async def signout(request: Request):
    s = await web.need(request)
    await web.form(request, s)
    sessions.table(request).drop(s.id)
    resp = RedirectResponse("/ui/signin", status_code=303)
    sessions.clear_cookie(resp)
    return resp


@router.get("/ui/forbidden")
async def forbidden(request: Request, why: str | None = None):
    s = await run_in_threadpool(sessions.current, request)
    return web.render(request, "forbidden.html", s, status=403, why=why)
