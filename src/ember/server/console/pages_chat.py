"""The chat playground page (GET /ui/chat). The page itself streams through /ui/proxy (static/chat.js)."""

from fastapi import APIRouter, Request

from ember.server.console import web
from ember.server.console.client import call, error_message

router = APIRouter(include_in_schema=False)


@router.get("/ui/chat")
async def chat(request: Request):
    s = await web.need(request)
    status, body = await call(request, "GET", "/v1/models")
    models, error = [], None
    if status == 200:
        models = [m["id"] for m in body.get("data", []) if "chat" in (m.get("capabilities") or ["chat"])
                  and m.get("max_model_len") is not None]
        if not models and body.get("data"):
            error = "models are still loading; reload in a moment"
    else:
        error = error_message(body)
    return web.render(request, "chat.html", s, models=models, error=error)
