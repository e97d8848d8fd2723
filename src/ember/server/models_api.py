"""What a running server has loaded, over HTTP (admin keys): list, load, unload, keep_alive.

    curl -H "Authorization: Bearer $ADMIN_KEY" localhost:8000/api/models/loaded
    curl -H "Authorization: Bearer $ADMIN_KEY" -X POST localhost:8000/api/models/load \\
         -d '{"model": "my-model@production", "keep_alive": "5m"}'
    curl -H "Authorization: Bearer $ADMIN_KEY" -X POST localhost:8000/api/models/unload -d '{"model": "my-model"}'

Each entry: the served id (as started or loaded), the version serving it now (`ref`, which moves with its
alias), its weights' and KV cache's memory, its keep_alive, how many hot swaps it went through, and the last
failed load (`error`; the previous version kept serving). The process's RSS is reported once. Loads and
unloads are written to the audit log (`model.load`, `model.unload`, failures too) under the calling key.
"""

import asyncio

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from ember.engine import model_set
from ember.errors import EmberError, NotFound
from ember.server import residency
from ember.server.auth import require_scope

router = APIRouter(prefix="/api", dependencies=[Depends(require_scope("admin"))])


class LoadRequest(BaseModel):
    model: str
    keep_alive: float | str | None = None  # seconds or "30s" / "5m" / "1h"; negative: forever


class UnloadRequest(BaseModel):
    model: str


def loaded_entry(m) -> dict:
    engine = m.engine
    weights = residency.tensor_bytes(engine.model) if engine is not None and engine.model is not None else 0
    cache = residency.tensor_bytes(engine.cache) if engine is not None and engine.cache is not None else 0
    if m.encoder is not None:
        weights = residency.tensor_bytes(m.encoder)
    return {"id": m.id, "ref": m.ref, "kind": m.kind, "loaded": m.loaded,
            "follows_alias": model_set.follows_alias(m.id),
            "memory_bytes": weights + cache, "weights_bytes": weights, "kv_cache_bytes": cache,
            "keep_alive": m.keep_alive, "running": m.admission.running, "waiting": m.admission.waiting,
            "swaps": m.swaps, "error": m.error, "failed_ref": m.failed_ref}


@router.get("/models/loaded")
def loaded(request: Request):
    st = request.app.state
    return {"object": "list", "rss_bytes": model_set.rss_bytes(), "max_memory": st.pool.max_memory,
            "data": [loaded_entry(m) for m in st.pool.all()]}


def _audit(request: Request, action: str, target: str, detail: dict) -> None:
    """One audit entry attributed to the request's key (store/audit.py); runs in a worker thread."""
    from ember.store import audit

    key = getattr(request.state, "key", None)
    audit.record(action, target, detail=detail, actor=key.id if key else None, settings=request.app.state.settings)


@router.post("/models/load")
async def load(body: LoadRequest, request: Request):
    residency.parse_duration(body.keep_alive)  # a bad value is a 400 before any work
    try:
        served = await residency.load(request.app, body.model, body.keep_alive)
    except EmberError as e:
        await asyncio.to_thread(_audit, request, "model.load_failed", body.model, {"error": e.message[:500]})
        raise
    await asyncio.to_thread(_audit, request, "model.load", body.model,
                            {"id": served.id, "version": served.ref, "keep_alive": served.keep_alive})
    return loaded_entry(served)


@router.post("/models/unload")
async def unload(body: UnloadRequest, request: Request):
    served = residency.find_base(request.app.state.pool, body.model)
    if served is None:
        raise NotFound(f"the model {body.model!r} is not served here", param="model", code="model_not_found")
    residency.unload(request.app.state.pool, served)
    await asyncio.to_thread(_audit, request, "model.unload", body.model, {"id": served.id, "version": served.ref})
    return loaded_entry(served)
