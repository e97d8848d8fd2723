"""The served model's life cycle: follow registry aliases, hot-swap versions, and count it all.

    ember serve --model m@production --follow-interval 1
    ember models alias m@production 2          # any process: within ~a second the server serves m:2

`follow(app)` runs as a task on the server's event loop. Every `follow_interval` seconds it reads the
registry's alias change counter (engine/model_set.py: one indexed query) and unloads idle models
(server/residency.py, keep_alive). When it grew, every served model
started by a movable reference (`name@alias`, plain `name`) is resolved again; one whose alias now names
another version is swapped:

1. the new version loads next to the old (on the compute thread, off the event loop); if that fails, the
   old version keeps serving, the error is logged, counted (`ember:model_load_failures_total`) and shown
   in /api/models/loaded, and that version is not retried until the alias moves again;
2. on the event loop, the served model's engine and version are replaced: new requests go to the new one,
   each running stream stays on the engine it started on (server/generation.py pins it);
3. once the old engine has no request left, it is stopped and freed (model_set.free_engine), so memory
   returns to one model's worth. A rollback is the same move backwards.
"""

import asyncio
import logging
import time

from prometheus_client import Counter

from ember.engine import model_set
from ember.errors import EmberError, Unsupported
from ember.server import residency

log = logging.getLogger("ember.server")


class Lifecycle:
    """Metrics of loads, swaps and per-version traffic, registered on the app's metrics registry."""

    def __init__(self, registry, pool=None):
        r = registry
        if pool is not None:
            r.register(_AdapterStats(pool))
        self.loads = Counter("ember:model_loads", "Model versions loaded.", ["model_name", "version"], registry=r)
        self.failures = Counter("ember:model_load_failures", "Model version loads that failed.",
                                ["model_name", "version"], registry=r)
        self.swaps = Counter("ember:model_swaps", "Hot swaps of a served model to another version.",
                             ["model_name"], registry=r)
        self.unloads = Counter("ember:model_unloads", "Model versions freed.", ["model_name"], registry=r)
        self.requests = Counter("ember:version_requests", "Generation requests answered, by the version that "
                                "answered.", ["model_name", "version"], registry=r)
        self.tokens = Counter("ember:version_generation_tokens", "Tokens generated, by version.",
                              ["model_name", "version"], registry=r)

    def served(self, name: str, version: str, tokens: int) -> None:
        # Label values are registry versions this server loaded: bounded by the swaps it made.
        self.requests.labels(name, version).inc()
        self.tokens.labels(name, version).inc(tokens)


class _AdapterStats:
    """LoRA adapter cache counters of every base engine, read at scrape time."""

    def __init__(self, pool):
        self.pool = pool

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        fams = {k: CounterMetricFamily(f"ember:adapter_cache_{k}", f"LoRA adapter cache {k}.", labels=["model_name"])
                for k in ("hits", "misses", "evictions")}
        loaded = GaugeMetricFamily("ember:adapters_loaded", "LoRA adapters resident on a base.", labels=["model_name"])
        for m in self.pool.all():
            cache = m.engine.adapters if m.engine is not None else None
            if cache is not None:
                stats = cache.stats()
                for k, fam in fams.items():
                    fam.add_metric([m.id], stats[k])
                loaded.add_metric([m.id], len(stats["loaded"]))
        yield from fams.values()
        yield loaded


async def follow(app, interval: float) -> None:
    """Poll the registry until the server shuts down; never raises (a database hiccup is logged, retried)."""
    st = app.state
    last = None
    while not st.draining:
        await asyncio.sleep(interval)
        if not st.pool.ready or st.draining:
            continue
        residency.reap_idle(st.pool)
        try:
            counter = await asyncio.to_thread(model_set.alias_counter, st.settings)
        except Exception as e:  # noqa: BLE001 - the next poll retries
            log.warning("cannot read the registry's alias counter: %s", e)
            continue
        if counter == last:
            continue
        last = counter
        for served in st.pool.all():
            if model_set.follows_alias(served.id) and served.loaded:
                await check(app, served)


async def check(app, served) -> None:
    from ember.store import registry

    st = app.state
    try:
        info = await asyncio.to_thread(registry.resolve, served.id, st.settings)
    except EmberError as e:
        log.warning("%s no longer resolves (%s); still serving %s", served.id, e.message, served.ref)
        return
    if info.ref == served.ref:
        served.failed_ref = served.error = None  # the alias moved back to what is served: nothing failed now
        return
    if info.ref == served.failed_ref:
        return
    await swap(app, served, info)


async def swap(app, served, info) -> bool:
    """Load `info` next to the served version and switch to it; False (old version kept) when loading fails."""
    st = app.state
    lc = st.metrics.lifecycle
    t = time.perf_counter()
    log.info("%s moved to %s: loading it next to %s", served.id, info.ref, served.ref)
    try:
        new = await asyncio.to_thread(_load_next_to, st.pool, served, info)
        if new.kind != served.kind:
            raise Unsupported(f"{info.ref} is a {new.kind} model; {served.id} serves {served.kind}")
    except Exception as e:  # noqa: BLE001 - any failure keeps the old version serving
        served.failed_ref = info.ref
        served.error = f"loading {info.ref} failed: {getattr(e, 'message', None) or f'{type(e).__name__}: {e}'}"
        lc.failures.labels(served.id, info.ref).inc()
        log.error("%s; still serving %s", served.error, served.ref)
        return False
    lc.loads.labels(served.id, info.ref).inc()
    old_engine, old_encoder, old_ref = served.engine, served.encoder, served.ref
    # One synchronous block on the event loop: no request can see half of the switch.
    served.engine, served.encoder = new.engine, new.encoder
    served.ref, served.metadata, served.created = info.ref, new.metadata, new.created
    served.failed_ref = served.error = None
    served.swaps += 1
    lc.swaps.labels(served.id).inc()
    log.info("swapped %s: %s -> %s (loaded in %.1fs); %s finishes its streams, then is freed",
             served.id, old_ref, info.ref, time.perf_counter() - t, old_ref)
    task = asyncio.get_running_loop().run_in_executor(None, residency.retire, old_engine, old_encoder, old_ref)
    st.retiring = getattr(st, "retiring", set())
    st.retiring.add(task)
    task.add_done_callback(st.retiring.discard)
    lc.unloads.labels(served.id).inc()
    return True


def _load_next_to(pool, served, info):
    residency.make_room(pool, residency.estimate_bytes(info), keep=served)  # --max-memory: the old one stays
    return pool._load_one(info.ref)
