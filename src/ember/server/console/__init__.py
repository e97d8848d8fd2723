"""The web console: `ember serve` shows the platform in a browser at /ui (same origin as the API).

    ember keys create --name me --scopes admin
    ember serve            # then open http://127.0.0.1:8000/ and sign in with the key

Server-rendered Jinja2 pages (templates/) with small vanilla scripts (static/), no build step and nothing
loaded from elsewhere. Every page gets its data from the API routes (/v1, /api) as the signed-in key
(client.py); sessions and CSRF are in sessions.py. Modules: pages_auth (sign-in, first run), pages_chat
(playground), pages_models (registry, evaluations), pages_jobs (jobs), pages_admin (keys, usage, audit,
server). `install(app)` adds them to the app (called by server/app.py).
"""

from pathlib import Path

from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from ember.server.console import client, web

STATIC = Path(__file__).parent / "static"


def is_console_path(path: str) -> bool:
    """Paths the console answers itself (session cookie + CSRF, form bodies): an HTTP-level guard that insists
    on bearer tokens and JSON bodies must let these through."""
    return path == "/" or path == "/ui" or path.startswith("/ui/")


def install(app) -> None:
    from ember.server.console import pages_admin, pages_auth, pages_chat, pages_jobs, pages_models

    app.add_exception_handler(web.Redirect, web.redirect_handler)
    app.mount(client.PREFIX, client.Proxy(), name="console-proxy")
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="console-static")
    for module in (pages_auth, pages_chat, pages_models, pages_jobs, pages_admin):
        app.include_router(module.router)

    @app.get("/", include_in_schema=False)
    async def root():
        return RedirectResponse("/ui", status_code=303)
