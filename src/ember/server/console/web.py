"""What every console page shares: templates, the signed-in session, CSRF-checked forms, flash messages.

    @router.get("/ui/models")
    async def models(request: Request):
        s = await web.need(request, admin=True)          # signed in, admin scope (else sign-in / 403 page)
        return web.render(request, "models.html", s, models=...)

    form = await web.form(request, s)                     # 403 unless its csrf_token is the session's
"""

import json
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from ember.server.console import sessions

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
def _when(value) -> str:
    """A time for people: ISO strings and Unix timestamps (the jobs API's) as 'YYYY-MM-DD HH:MM UTC'."""
    if value in (None, ""):
        return "—"
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return str(value)[:16].replace("T", " ")


templates.env.filters["when"] = _when
templates.env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False, default=str)


class Redirect(Exception):
    def __init__(self, url: str, status: int = 303):
        self.url, self.status = url, status


async def redirect_handler(_request: Request, e: Redirect):
    return RedirectResponse(e.url, status_code=e.status)


class Refused(Exception):
    pass


async def need(request: Request, admin: bool = False) -> sessions.Session:
    s = await run_in_threadpool(sessions.current, request)
    if s is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise Redirect("/ui/signin?next=" + quote(target, safe=""))
    if admin and not s.admin:
        raise Redirect("/ui/forbidden")
    return s


def render(request: Request, name: str, s: sessions.Session | None, status: int = 200, **ctx) -> HTMLResponse:
    flash, error = (s.flash.pop(0) if s is not None and s.flash else (None, None))
    resp = templates.TemplateResponse(request, name, {"s": s, "flash": flash, "flash_error": error,
                                                      "path": request.url.path, **ctx}, status_code=status)
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Referrer-Policy"] = "same-origin"
    resp.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                               "script-src 'self'; frame-ancestors 'none'; form-action 'self'")
    return resp


async def form(request: Request, s: sessions.Session) -> dict:
    """The posted form (multipart or urlencoded) once its CSRF token and Origin check out; else 403 page."""
    data = await request.form()
    if not sessions.csrf_ok(request, s, data.get("csrf_token")):
        raise Redirect("/ui/forbidden?why=csrf")
    return data


def back(s: sessions.Session, url: str, msg: str | None = None, err: str | None = None) -> RedirectResponse:
    """Redirect after a POST; the message is shown once on the next page (kept in the session, not the URL)."""
    s.flash[:] = [(msg, err)]
    return RedirectResponse(url, status_code=303)
