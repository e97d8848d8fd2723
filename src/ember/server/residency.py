"""Which served models are resident in memory: load after start, keep_alive, unload, a memory budget.

    ember serve --model smollm2-135m-instruct --keep-alive 5m --max-memory 2GB
    ember models load my-model@production --keep-alive 10m      # against the running server (/api/models/load)
    ember models unload my-model@production
    ember models ps                                              # what is loaded, with memory

Every load after start goes through `ensure` (one mechanism, blocking, run in a worker thread):
- a served model that was unloaded (idle past its `keep_alive`, evicted for memory, or by /api/models/unload)
  loads again on its next request, which waits for it rather than failing, as Ollama does;
- a registered version not served yet loads as a new entry when it descends from a served model (a
  fine-tuning job's result: the job worker calls `Pool.ensure` before the job reports success), up to
  pool.MAX_ON_DEMAND at once (the least recently used idle one is unloaded to make room), or when an admin
  loads it (/api/models/load: any version);
- a LoRA adapter whose base is served needs nothing but its base (the adapter loads on first use).
Concurrent calls for one model wait for a single load. With `--max-memory`, a load that would not fit first
unloads the least recently used idle models; when nothing idle is left, it is refused with 503 instead of
running out of memory. An unload lets the model's running streams finish before its engine is freed
(`retire`); so does a hot swap (server/follow.py).
"""

import asyncio
import logging
import re
import threading
import time

from ember.engine import model_set
from ember.errors import EmberError, InvalidRequest, NotFound
from ember.server import limits
from ember.server.errors import NotReady

log = logging.getLogger("ember.server")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}
_SIZES = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_duration(value) -> float | None:
    """keep_alive as Ollama takes it: seconds, or "30s"/"5m"/"1h"; negative: forever (None)."""
    if value is None:
        return None
    m = re.fullmatch(r"\s*(-?[0-9]{1,9}(?:\.[0-9]{1,6})?)\s*([smh]?)\s*", str(value)[:40])
    if not m:
        raise InvalidRequest(f"invalid keep_alive {str(value)[:40]!r}: use seconds or a duration like 30s, 5m, 1h",
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
    engine, encoder = served.engine, served.encoder
    if engine is not None and engine.model is not None:
        return tensor_bytes(engine.model) + tensor_bytes(engine.cache)
    if encoder is not None:
        return tensor_bytes(encoder)
    return 0


def estimate_bytes(info) -> int:
    """Memory a version will take once loaded: its weights in fp32 (Ember computes in fp32 on the CPU)."""
    size = sum(n for p, n in info.sizes.items() if p.endswith(".safetensors"))
    dtype = str(info.metadata.get("torch_dtype") or info.metadata.get("dtype") or "")
    return size * 2 if "16" in dtype else size


def _base(served):
    return getattr(served, "base", served)  # an adapter view lives and dies with its base


def _idle(m) -> bool:
    return not m.admission.running and not m.admission.waiting


# ----- the one loading mechanism (blocking: worker threads) -----
def ensure(pool, name: str, *, admin: bool = False, keep_alive=False):
    """The served model `name` names, in memory. admin=True (/api/models/load) may load any registered version;
    otherwise only versions descending from a served model load. keep_alive (seconds or None) is set on it
    unless False. Raises NotFound, or NotReady (503) when memory or MAX_ON_DEMAND leave no room."""
    from ember.server.pool import MAX_ON_DEMAND, resolve_or_pull

    while True:
        served = pool.find(name)
        info = None
        if served is not None:
            base = _base(served)
            if base.loaded:
                break
            key = base.id
        else:
            try:
                info = resolve_or_pull(name, pool.settings) if admin else _resolve(name, pool.settings)
            except NotFound as e:
                raise NotFound(e.message, param="model", code="model_not_found") from None
            if not admin and not pool.derived([info.ref, *info.lineage]):
                raise NotFound(f"the model {name!r} does not exist or is not served here (see /v1/models)",
                               param="model", code="model_not_found")
            key = info.ref
        with pool.lock:
            event = pool.loading.get(key)
            owner = event is None
            if owner:
                event = pool.loading[key] = threading.Event()
        if not owner:
            event.wait()
            continue  # loaded (or failed) by another caller: look again
        try:
            if served is not None:
                _reload(pool, _base(served))
            else:
                new_id = name if admin else info.ref  # on demand: served as its version (`fine_tuned_model`)
                if not admin and sum(m.on_demand and m.loaded for m in pool.all()) >= MAX_ON_DEMAND:
                    _evict(pool, [m for m in pool.all() if m.on_demand and m.loaded],
                           f"{MAX_ON_DEMAND} models loaded on demand are all busy; retry later",
                           f"evicted (more than {MAX_ON_DEMAND} models loaded on demand)")
                make_room(pool, estimate_bytes(info))
                new = pool._load_one(new_id)
                new.on_demand = not admin
                pool.add(new)
                _count(pool, "loads", new)
        finally:
            with pool.lock:
                pool.loading.pop(key, None)
            event.set()
    base = _base(served)
    if keep_alive is not False:
        base.keep_alive = keep_alive
    base.last_used = time.monotonic()
    return served


def _resolve(name: str, settings):
    from ember.store import registry

    try:
        return registry.resolve(name, settings)
    except EmberError:
        raise NotFound(f"the model {name!r} does not exist or is not served here (see /v1/models)") from None


def _reload(pool, served) -> None:
    """Loads an unloaded entry again; a name@alias entry loads whatever its alias names now."""
    from ember.store import registry

    make_room(pool, estimate_bytes(registry.resolve(served.id, pool.settings)), keep=served)
    new = pool._load_one(served.id)
    served.engine, served.encoder = new.engine, new.encoder
    served.ref, served.metadata, served.created = new.ref, new.metadata, new.created
    served.unloaded = False
    _count(pool, "loads", served)


def _count(pool, what: str, served) -> None:
    lc = pool.lifecycle
    if lc is not None:
        counter = getattr(lc, what)
        (counter.labels(served.id, served.ref) if what == "loads" else counter.labels(served.id)).inc()


def _evict(pool, candidates: list, why: str, reason: str) -> None:
    """Unloads the least recently used idle candidate; NotReady(why) when every candidate is busy."""
    idle = sorted((m for m in candidates if _idle(m)), key=lambda m: m.last_used)
    if not idle:
        raise NotReady(why)
    unload(pool, idle[0], reason=reason)


def make_room(pool, need: int, keep=None) -> None:
    """Unloads least recently used idle models until `need` more bytes fit --max-memory; else 503."""
    budget = pool.max_memory
    while budget:
        loaded = [m for m in pool.all() if m.loaded and m is not keep]
        used = sum(model_bytes(m) for m in loaded) + (model_bytes(keep) if keep is not None else 0)
        if used + need <= budget:
            return
        _evict(pool, loaded, f"not enough memory: loading needs {need / 2**20:.0f} MB, {used / 2**20:.0f} MB of "
                             f"the {budget / 2**20:.0f} MB budget (--max-memory) are used by busy models",
               "evicted for memory")


def unload(pool, served, reason: str = "unloaded") -> None:
    """Takes the model out of memory; its entry stays and its next request loads it again. Its running
    streams finish first (they hold the engine: `retire` waits for them)."""
    with pool.lock:
        if not served.loaded:
            return
        engine, encoder = served.engine, served.encoder
        served.engine = served.encoder = None
        served.unloaded = True
    _count(pool, "unloads", served)
    log.info("%s: %s (%s)", reason, served.id, served.ref)
    threading.Thread(target=retire, args=(engine, encoder, served.ref), name=f"retire-{served.ref}",
                     daemon=True).start()


def retire(engine, encoder, ref: str) -> None:
    """Waits until the version's last request ended, then frees it (runs in a worker thread)."""
    before = model_set.rss_bytes()
    if engine is not None:
        model_set.wait_idle(engine)
        model_set.free_engine(engine)
    del engine, encoder
    model_set.release_memory()
    log.info("freed %s (RSS %.0f MB -> %.0f MB)", ref, before / 2**20, model_set.rss_bytes() / 2**20)


def reap_idle(pool) -> None:
    """Unloads every model idle for longer than its keep_alive (called by the follower's loop)."""
    now = time.monotonic()
    for served in pool.all():
        if served.keep_alive is None or not served.loaded:
            continue
        if not _idle(served):
            served.last_used = now  # idle time counts from the end of its last request
        elif now - served.last_used > served.keep_alive:
            unload(pool, served, reason=f"idle for {served.keep_alive:g}s (keep_alive)")


def find_base(pool, name: str | None):
    """The pool entry `name` names (an adapter's base is not unloaded through the adapter's name)."""
    served = pool.find(name)
    return None if served is None or hasattr(served, "base") else served


# ----- request side (event loop) -----
class Named:
    def __init__(self, id: str, ref: str):
        self.id, self.ref = id, ref


async def ensure_loaded(request, name: str | None, kind: str | None = None) -> None:
    """Before a request runs: mark its model used; one not in memory loads first (the request waits). A key
    limited to other models gets its 404 before anything loads; an unknown name is left to the route."""
    st = request.app.state
    pool = st.pool
    if st.draining or not pool.ready:
        return
    served = pool.find(name, kind)
    if served is not None and kind is not None and served.kind != kind:
        return  # the route refuses it (400) without loading it
    if served is not None:
        base = _base(served)
        base.last_used = time.monotonic()
        if base.loaded:
            if served is not base and base.engine is not None and base.engine.adapters is not None:
                limits.check_model(request, served)
                await asyncio.to_thread(base.engine.adapters.warm, served.adapter)  # files read off the loop
            return
        limits.check_model(request, served)
    else:
        version = pool._version_of(name) if name else None
        if version is None:
            return
        limits.check_model(request, Named(name, version))
    await asyncio.to_thread(ensure, pool, name if name else served.id)


async def load(app, ref: str, keep_alive) -> object:
    """/api/models/load: serve `ref` (loading it, within the budget) or load it again; sets its keep_alive."""
    pool = app.state.pool
    served = await asyncio.to_thread(ensure, pool, ref, admin=True,
                                     keep_alive=False if keep_alive is None else parse_duration(keep_alive))
    return _base(served)
