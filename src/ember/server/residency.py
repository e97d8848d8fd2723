"""Which served models are resident in memory: keep_alive, unload, load on the next request, a memory budget.

    ember serve --model smollm2-135m-instruct --keep-alive 5m --max-memory 2GB
    ember models load my-model@production --keep-alive 10m      # against the running server (/api/models/load)
    ember models unload my-model@production
    ember models ps                                              # what is loaded, with memory

As Ollama does: a model idle for longer than its `keep_alive` is unloaded (its entry stays in /v1/models),
and the next request that names it loads it again, waiting for the load rather than failing. With
`--max-memory`, loading a model that would not fit first unloads the least recently used idle models;
when nothing idle is left to unload, the load is refused with 503 instead of running out of memory.
An unload lets the model's running streams finish before its engine is freed (server/follow.py `retire`).
"""

import asyncio
import re
import time

from ember.engine import model_set
from ember.errors import InvalidRequest, NotFound
from ember.server.errors import NotReady

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}
_SIZES = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_duration(value) -> float | None:
    """keep_alive as Ollama takes it: seconds, or "30s"/"5m"/"1h"; negative: forever (None)."""
    if value is None:
        return None
    m = re.fullmatch(r"\s*(-?[0-9]+(?:\.[0-9]+)?)\s*([smh]?)\s*", str(value))
    if not m:
        raise InvalidRequest(f"invalid keep_alive {value!r}: use seconds or a duration like 30s, 5m, 1h",
                             param="keep_alive")
    seconds = float(m[1]) * _UNITS[m[2]]
    return None if seconds < 0 else seconds


def parse_size(value: str | None) -> int | None:
    if not value:
        return None
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmg]i?b|b)?\s*", str(value).lower())
    if not m:
        raise InvalidRequest(f"invalid memory size {value!r}: use e.g. 800MB or 4GB")
    return int(float(m[1]) * _SIZES[m[2] or ""])


def tensor_bytes(obj) -> int:
    """Bytes of the tensors an object holds (a decoder, a KV cache), each tensor counted once."""
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


def model_bytes(served) -> int:
    if served.engine is not None and served.engine.model is not None:
        return tensor_bytes(served.engine.model) + tensor_bytes(served.engine.cache)
    if served.encoder is not None:
        return tensor_bytes(served.encoder)
    return 0


def estimate_bytes(info) -> int:
    """Memory a version will take once loaded: its weights in fp32 (Ember computes in fp32 on the CPU)."""
    size = sum(n for p, n in info.sizes.items() if p.endswith(".safetensors"))
    dtype = str(info.metadata.get("torch_dtype") or info.metadata.get("dtype") or "")
    return size * 2 if "16" in dtype else size


def find(pool, name: str | None):
    if not name:
        return pool.all()[0] if len(pool.models) == 1 else None
    served = pool.models.get(name)
    if served is None:
        version = pool._version_of(name)
        served = next((m for m in pool.all() if version and m.ref == version), None)
    return served


def _locks(app) -> dict:
    if not hasattr(app.state, "residency_locks"):
        app.state.residency_locks = {}
    return app.state.residency_locks


async def ensure_loaded(request, name: str | None) -> None:
    """Before a request runs: mark its model used; an unloaded one loads first (the request waits)."""
    app = request.app
    served = find(app.state.pool, name)
    if served is None:
        return  # the route's own lookup reports the unknown model
    served.last_used = time.monotonic()
    if not served.unloaded:
        return
    lock = _locks(app).setdefault(served.id, asyncio.Lock())
    async with lock:
        if served.unloaded:
            await reload(app, served)
    served.last_used = time.monotonic()


async def make_room(app, need: int, keep=None) -> None:
    """Unload least recently used idle models until `need` more bytes fit the budget; else 503."""
    budget = app.state.config.max_memory
    if not budget:
        return
    pool = app.state.pool
    while True:
        loaded = [m for m in pool.all() if m.loaded and m is not keep]
        used = sum(model_bytes(m) for m in loaded)
        if used + need <= budget:
            return
        idle = sorted((m for m in loaded if not m.admission.running and not m.admission.waiting),
                      key=lambda m: m.last_used)
        if not idle:
            raise NotReady(f"not enough memory: loading needs {need / 2**20:.0f} MB, {used / 2**20:.0f} MB of the "
                           f"{budget / 2**20:.0f} MB budget (--max-memory) are used by busy models")
        unload(app, idle[0], reason="evicted for memory")


async def reload(app, served) -> None:
    from ember.store import registry

    st = app.state
    info = await asyncio.to_thread(registry.resolve, served.id, st.settings)
    await make_room(app, estimate_bytes(info), keep=served)
    new = await asyncio.to_thread(st.pool._load_one, served.id)
    served.engine, served.encoder = new.engine, new.encoder
    served.ref, served.metadata, served.created = new.ref, new.metadata, new.created
    served.unloaded = False
    st.metrics.lifecycle.loads.labels(served.id, served.ref).inc()


def unload(app, served, reason: str = "unloaded") -> None:
    """Takes the model out of memory; its entry stays and its next request loads it again."""
    from ember.server.follow import log, retire

    if not served.loaded:
        return
    engine, encoder = served.engine, served.encoder
    served.engine = served.encoder = None
    served.unloaded = True
    app.state.metrics.lifecycle.unloads.labels(served.id).inc()
    log.info("%s: %s (%s)", reason, served.id, served.ref)
    asyncio.get_running_loop().run_in_executor(None, retire, engine, encoder, served.ref)


def reap_idle(app) -> None:
    """Unload every model idle for longer than its keep_alive (called by the follower's loop)."""
    now = time.monotonic()
    for served in app.state.pool.all():
        if served.keep_alive is None or not served.loaded:
            continue
        if served.admission.running or served.admission.waiting:
            served.last_used = now  # idle time counts from the end of its last request
        elif now - served.last_used > served.keep_alive:
            unload(app, served, reason=f"idle for {served.keep_alive:g}s (keep_alive)")


async def load(app, ref: str, keep_alive) -> object:
    """/api/models/load: serve `ref` (loading it, within the budget) or reload it; sets its keep_alive."""
    from ember.server.pool import resolve_or_pull

    st = app.state
    pool = st.pool
    served = find(pool, ref)
    if served is None:
        try:
            info = await asyncio.to_thread(resolve_or_pull, ref, st.settings)
        except NotFound as e:
            raise NotFound(e.message, param="model", code="model_not_found") from None
        await make_room(app, estimate_bytes(info))
        served = await asyncio.to_thread(pool._load_one, ref)
        pool.models[ref] = served
        pool.refs.append(ref)
        st.metrics.lifecycle.loads.labels(served.id, served.ref).inc()
    elif served.unloaded:
        lock = _locks(app).setdefault(served.id, asyncio.Lock())
        async with lock:
            if served.unloaded:
                await reload(app, served)
    if keep_alive is not None:
        served.keep_alive = parse_duration(keep_alive)
    served.last_used = time.monotonic()
    return served


def rss() -> int:
    return model_set.rss_bytes()
