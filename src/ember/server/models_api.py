"""What a running server has loaded, over HTTP (admin keys): versions behind aliases, memory, load errors.

    curl -H "Authorization: Bearer $ADMIN_KEY" localhost:8000/api/models/loaded

Each entry: the served id (as started), the version serving it now (`ref`, which moves with its alias), its
weights' and KV cache's memory, how many hot swaps it went through, and the last failed load (`error`; the
previous version kept serving). The process's RSS is reported once, for the whole server.
"""

from fastapi import APIRouter, Depends, Request

from ember.engine import model_set
from ember.server.auth import require_scope

router = APIRouter(prefix="/api", dependencies=[Depends(require_scope("admin"))])


def _tensor_bytes(obj) -> int:
    import torch

    seen, total = set(), 0

    def walk(x, depth=0):
        nonlocal total
        if depth > 4 or id(x) in seen:
            return
        seen.add(id(x))
        if isinstance(x, torch.Tensor):
            total += x.numel() * x.element_size()
        elif isinstance(x, (list, tuple)):
            for y in x:
                walk(y, depth + 1)
        elif hasattr(x, "__dict__"):
            for y in vars(x).values():
                walk(y, depth + 1)

    walk(obj)
    return total


def loaded_entry(m) -> dict:
    engine = m.engine
    weights = _tensor_bytes(engine.model) if engine is not None and engine.model is not None else 0
    cache = _tensor_bytes(engine.cache) if engine is not None and engine.cache is not None else 0
    return {"id": m.id, "ref": m.ref, "kind": m.kind, "loaded": m.loaded,
            "follows_alias": model_set.follows_alias(m.id),
            "memory_bytes": weights + cache, "weights_bytes": weights, "kv_cache_bytes": cache,
            "running": m.admission.running, "waiting": m.admission.waiting, "swaps": m.swaps,
            "error": m.error, "failed_ref": m.failed_ref}


@router.get("/models/loaded")
def loaded(request: Request):
    pool = request.app.state.pool
    return {"object": "list", "rss_bytes": model_set.rss_bytes(), "data": [loaded_entry(m) for m in pool.all()]}
