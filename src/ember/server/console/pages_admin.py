"""Keys, usage and audit (admin) and the server page (any signed-in key).

    GET  /ui/keys                   keys (GET /api/keys), usage per key and model (GET /api/usage), audit log
    POST /ui/keys                   create (the secret is shown once, on the next page only); /ui/keys/ID/revoke
    GET  /ui/server                 loaded models, memory, running/waiting, throughput and TTFT
    GET  /ui/server/stats           the numbers behind it: the /metrics counters, sampled every 5 s

Usage and audit come from issue 13's /api/usage and /api/audit; where they answer 404 the page says so.
"""

import asyncio
import collections
import os
import sys
import time

from fastapi import APIRouter, Request

from ember.server.console import web
from ember.server.console.client import call, error_message

router = APIRouter(include_in_schema=False)
LIMIT_FIELDS = ("rpm", "tpm", "max_parallel", "budget_tokens")
SAMPLE_EVERY, HISTORY = 5.0, 120  # a sample of the counters every 5 s, the last 10 minutes kept


@router.get("/ui/keys")
async def keys(request: Request):
    s = await web.need(request, admin=True)
    st, body = await call(request, "GET", "/api/keys")
    key_rows = body.get("data", []) if st == 200 else []
    su, usage = await call(request, "GET", "/api/usage")
    sa, audit = await call(request, "GET", "/api/audit", params={"limit": 50})
    created = getattr(s, "new_secret", None)
    s.new_secret = None  # shown once
    return web.render(request, "keys.html", s, keys=key_rows, keys_error=None if st == 200 else error_message(body),
                      usage=usage.get("data", []) if su == 200 else None, usage_status=su,
                      audit=audit.get("data", []) if sa == 200 else None, audit_status=sa, created=created,
                      limit_fields=LIMIT_FIELDS)


@router.post("/ui/keys")
async def create_key(request: Request):
    s = await web.need(request, admin=True)
    f = await web.form(request, s)
    body = {"name": str(f.get("name") or "").strip(), "scopes": [str(x) for x in f.getlist("scopes")] or ["inference"]}
    for k in LIMIT_FIELDS:
        v = str(f.get(k) or "").strip()
        if v:
            if not v.isdigit():
                return web.back(s, "/ui/keys", err=f"{k} must be a whole number (or blank for no limit)")
            body[k] = int(v)
    st, key = await call(request, "POST", "/api/keys", json_body=body)
    if st not in (200, 201):
        return web.back(s, "/ui/keys", err=f"No key created: {error_message(key)}")
    s.new_secret = {"name": key["name"], "id": key["id"], "secret": key["secret"]}
    return web.back(s, "/ui/keys", msg=f"Key {key['name']} ({key['id']}) created.")


@router.post("/ui/keys/{key_id}/revoke")
async def revoke_key(request: Request, key_id: str):
    s = await web.need(request, admin=True)
    await web.form(request, s)
    st, key = await call(request, "POST", f"/api/keys/{key_id}/revoke")
    if st != 200:
        return web.back(s, "/ui/keys", err=f"Not revoked: {error_message(key)}")
    return web.back(s, "/ui/keys", msg=f"Key {key['name']} ({key_id}) revoked; it stops working within seconds.")


def _parse_metrics(text: str) -> dict:
    """{metric name: {model: value}} for the ember: samples (label model_name; others summed)."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if not line.startswith("ember:"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        model = ""
        if 'model_name="' in labels:
            model = labels.split('model_name="', 1)[1].split('"', 1)[0]
        try:
            out.setdefault(name, {}).setdefault(model, 0.0)
            out[name][model] += float(value)
        except ValueError:
            continue
    return out


def _memory() -> dict:
    mem = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    mem[line.split(":")[0]] = int(line.split()[1]) * 1024
    except OSError:
        pass
    torch = sys.modules.get("torch")  # only when the engine has already imported it
    if torch is not None and torch.cuda.is_available():
        mem["gpu_allocated"] = int(torch.cuda.memory_allocated())
        mem["gpu_reserved"] = int(torch.cuda.memory_reserved())
    return mem


def _sample(app) -> dict:
    """The counters behind /metrics (the app's own registry, the same numbers a scrape returns), per model."""
    m = _parse_metrics(app.state.metrics.exposition().decode())
    models = sorted(set(m.get("ember:num_requests_running", {})) | set(m.get("ember:generation_tokens_total", {})))

    def get(name, model):
        return m.get(name, {}).get(model, 0.0)

    return {"t": time.time(), "models": [
        {"model": x, "running": get("ember:num_requests_running", x), "waiting": get("ember:num_requests_waiting", x),
         "cache_usage": get("ember:cache_usage_perc", x),
         "generation_tokens": get("ember:generation_tokens_total", x),
         "ttft_sum": get("ember:time_to_first_token_seconds_sum", x),
         "ttft_count": get("ember:time_to_first_token_seconds_count", x),
         "requests": get("ember:request_success_total", x)} for x in models]}


async def _sampler(app, samples) -> None:
    while True:
        samples.append(_sample(app))
        await asyncio.sleep(SAMPLE_EVERY)


def _history(app) -> collections.deque:
    """Samples of the last minutes; the sampler starts with the first look at the server page."""
    st = app.state
    if getattr(st, "console_samples", None) is None:
        st.console_samples = collections.deque(maxlen=HISTORY)
        st.console_sampler = asyncio.get_running_loop().create_task(_sampler(app, st.console_samples))
    return st.console_samples


@router.get("/ui/server/stats")
async def stats(request: Request):
    """The sampled history plus a sample now; the page computes throughput and mean TTFT between samples."""
    await web.need(request)
    history = list(_history(request.app))
    return {"pid": os.getpid(), "memory": _memory(), "history": history, "now": _sample(request.app)}


@router.get("/ui/server")
async def server(request: Request):
    s = await web.need(request)
    _history(request.app)
    st, models = await call(request, "GET", "/v1/models")
    _, ready = await call(request, "GET", "/ready")
    return web.render(request, "server.html", s, models=models.get("data", []) if st == 200 else [],
                      ready=ready if isinstance(ready, dict) else {}, memory=_memory())
