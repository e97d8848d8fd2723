"""The `ember serve` application: FastAPI app factory, model loading, middlewares, and the uvicorn runner.

    ember serve                                     # smollm2-135m-instruct + minilm-l6-v2 on 127.0.0.1:8000
    ember serve --model my-model@production --port 9000 --max-queue 64 --require-key
    ember serve --host 0.0.0.0 --allowed-hosts ember.internal --ssl-certfile cert.pem --ssl-keyfile key.pem

Security defaults and limits are described in docs/security.md (server/hosts.py, server/limits.py).

`create_app(config)` returns the app; models load in a background thread after startup so /health answers
at once and /ready turns 200 when every model is loaded. Routes live in the routers listed in `ROUTERS`:
openai_api (/v1 completions, chat, embeddings, /tokenize, /detokenize), tasks_api (/v1/classify, /v1/tag),
rerank_api (/v1/rerank, /score), models_api (/api/models/loaded|load|unload) and platform_api (/api, admin
keys), among others. A new capability adds its router there. While the server runs, `follow.follow` polls the
registry's aliases (hot swap) and unloads idle models (keep_alive, server/residency.py).

`serve(config)` runs uvicorn. SIGTERM/SIGINT: stop admitting (new requests get 503, queued ones still
run), let in-flight requests finish for up to `shutdown_timeout` seconds, cancel what is left (each stream's
cleanup aborts its engine request), close the engines, exit 0.
"""

import asyncio
import importlib
import logging
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ember.config import Settings, get_settings
from ember.server import errors, follow, limits as limits_mod, metrics as metrics_mod
from ember.server.auth import Auth, require_scope
from ember.server.hosts import RequestGuard, default_allowed_hosts
from ember.server.middleware import BodyLimit, RequestLog
from ember.server.pool import Pool

log = logging.getLogger("ember.server")
# Every route of the server, one router per module (imported when an app is created).
# models_api before platform_api: /api/models/loaded must not be taken for the version `loaded`.
ROUTERS = ["ember.server.openai_api", "ember.server.responses_api", "ember.server.tasks_api",
           "ember.server.rerank_api", "ember.server.files_api", "ember.server.fine_tuning_api",
           "ember.server.batches_api", "ember.server.models_api", "ember.server.platform_api",
           "ember.server.jobs_api", "ember.server.usage_api", "ember.server.admin_api"]


@dataclass
class ServeConfig:
    models: list[str] = field(default_factory=list)  # empty: the two bundled catalog models
    host: str = "127.0.0.1"
    port: int = 8000
    max_slots: int = 32  # sequences generating at once, per model
    max_queue: int = 256  # requests waiting for a slot, per model; beyond it 429
    max_seq_len: int = 2048
    max_body_bytes: int = 4 * 1024 * 1024
    require_key: bool = False
    log_content: bool = False
    redact_content: bool = True  # with log_content: e-mails, phones, cards, IBANs, IPs, secrets masked
    shutdown_timeout: float = 30.0
    quantize: str | None = None
    speculative: object = None  # engine.speculative.SpecConfig: n-gram speculative decoding; None: off
    workers: int = 1  # job slots of the worker this server runs (jobs/worker.py); 0: none
    keep_alive: float | None = None  # seconds idle before a model unloads (None: never); see residency.py
    max_memory: int | None = None  # bytes of model weights + caches; beyond it: evict LRU idle or refuse
    max_adapters: int = 8  # LoRA adapters resident per base (served unmerged); least recently used out
    follow_interval: float = 1.0  # seconds between polls of the registry's alias counter; 0: do not follow
    settings: Settings | None = None
    allowed_hosts: list[str] | None = None  # None: loopback names when bound to loopback, else any
    allowed_origins: list[str] = field(default_factory=list)  # CORS; none by default
    max_queue_per_key: int | None = None  # None: a quarter of max_queue
    max_connections: int = 1024  # uvicorn limit_concurrency: beyond it 503
    keep_alive_timeout: float = 5.0
    header_timeout: float = 10.0  # seconds to receive a request's headers
    body_timeout: float = 30.0  # seconds between two chunks of a request body
    limits: limits_mod.RequestLimits = field(default_factory=limits_mod.RequestLimits)
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    backend: str = "ember"  # decoders on Ember's CPU engine, or "vllm" (engine/vllm_backend.py) on a GPU


def _load_models(app: FastAPI) -> None:
    st = app.state
    try:
        st.pool.load()
        log.info("ready: serving %s", ", ".join(st.pool.refs))
    except Exception as e:  # noqa: BLE001 - any failure to load is fatal for the server
        st.load_error = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
        if not hasattr(e, "message"):
            log.exception("loading models failed")
        log.error("cannot serve: %s", st.load_error)
        if st.on_fatal is not None:
            st.on_fatal()


@asynccontextmanager
async def _lifespan(app: FastAPI):
    loader = asyncio.get_running_loop().run_in_executor(None, _load_models, app)
    app.state.loader = loader
    worker = None
    if app.state.config.workers > 0:
        from ember.jobs.worker import Worker
        from ember.server.batch_runner import in_server

        batches = in_server(app, asyncio.get_running_loop(), app.state.settings)
        worker = Worker(app.state.settings, app.state.config.workers, pool=app.state.pool,
                        in_process={"batch": batches}).start()
    app.state.worker = worker
    interval = app.state.config.follow_interval
    follower = asyncio.create_task(follow.follow(app, interval)) if interval > 0 else None
    yield
    if follower is not None:
        follower.cancel()
    app.state.draining = True
    if worker is not None:  # running jobs stop; resumable ones go back to the queue
        await asyncio.get_running_loop().run_in_executor(None, worker.stop)
    if not loader.done():
        await loader
    app.state.pool.close()


def create_app(config: ServeConfig | None = None) -> FastAPI:
    config = config or ServeConfig()
    settings = config.settings or get_settings()
    app = FastAPI(title="Ember", version="0.1", lifespan=_lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    st = app.state
    st.config, st.settings = config, settings
    per_key = config.max_queue_per_key if config.max_queue_per_key is not None else max(1, config.max_queue // 4)
    st.pool = Pool(config.models, settings, max_slots=config.max_slots, max_queue=config.max_queue,
                   max_seq_len=config.max_seq_len, quantize=config.quantize, max_queue_per_key=per_key,
                   keep_alive=config.keep_alive, max_memory=config.max_memory, max_adapters=config.max_adapters,
                   backend=config.backend, speculative=config.speculative)
    st.metrics = metrics_mod.create(st.pool)
    st.metrics.lifecycle = st.pool.lifecycle = follow.Lifecycle(st.metrics.registry, st.pool)
    st.auth = Auth(settings, require_key=config.require_key)
    st.log_content = config.log_content
    st.limits = config.limits
    st.parallel = limits_mod.Parallel()
    st.draining = False
    st.load_error = None
    st.on_fatal = None
    errors.install(app)
    # Added innermost first: RequestLog wraps everything, so even a 413 is logged and counted; the guard
    # (Host, Origin, JSON bodies, a bearer token before the body is read) runs before CORS and the body.
    app.add_middleware(limits_mod.MessageCount, max_messages=config.limits.max_messages)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, body_timeout=config.body_timeout)
    if config.allowed_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=config.allowed_origins, allow_credentials=False,
                           allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
                           allow_headers=["authorization", "content-type"],
                           expose_headers=["x-request-id", "retry-after", "x-ratelimit-limit-requests",
                                           "x-ratelimit-remaining-requests", "x-ratelimit-limit-tokens",
                                           "x-ratelimit-remaining-tokens"])
    app.add_middleware(RequestGuard, allowed_hosts=default_allowed_hosts(config.host, config.allowed_hosts),
                       allowed_origins=config.allowed_origins, auth=st.auth)
    app.add_middleware(RequestLog, metrics=st.metrics, log_content=config.log_content,
                       redact=config.redact_content)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready(request: Request):
        # Without a valid key (when keys are on) only the state is shown: no model names, no load errors.
        detail = await run_in_threadpool(_may_see_details, request)
        if st.load_error:
            why = f"model loading failed: {st.load_error}" if detail else "model loading failed"
            return errors.error_response(503, why, "service_unavailable")
        if st.draining:
            return errors.error_response(503, "shutting down", "service_unavailable")
        if not st.pool.ready:
            extra = {"loaded": [m.id for m in st.pool.all() if m.loaded], "models": st.pool.refs} if detail else {}
            return JSONResponse({**errors.error_body("models are loading", "service_unavailable"), **extra},
                                status_code=503)
        return {"status": "ready", **({"models": [m.id for m in st.pool.all()]} if detail else {})}

    @app.get("/metrics", dependencies=[Depends(require_scope("admin", always=False))])
    async def metrics_endpoint():
        return Response(st.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    for module in ROUTERS:
        app.include_router(importlib.import_module(module).router)
    from ember.server import console  # the web console at /ui (server/console/)
    console.install(app)
    return app


def _may_see_details(request: Request) -> bool:
    from ember.errors import EmberError
    from ember.server.auth import bearer

    auth: Auth = request.app.state.auth
    if not auth.enabled():
        return True
    try:
        auth.check(bearer(request), "inference")
        return True
    except EmberError:
        return False


def configure_logging() -> None:
    """Plain lines on stderr; request lines are JSON documents on the `ember.requests` logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("ember", "uvicorn"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False


def serve(config: ServeConfig) -> int:
    """Runs the server until SIGTERM/SIGINT; returns the process exit code (0 after a clean shutdown)."""
    import uvicorn

    configure_logging()
    app = create_app(config)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if not app.state.draining:
                log.info("shutdown requested: no new requests; waiting up to %.0fs for in-flight ones",
                         config.shutdown_timeout)
            app.state.draining = True
            for m in app.state.pool.all():
                m.admission.closed = True
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal once it has shut down (the process then dies of SIGTERM); a
            # graceful shutdown is a normal end for us: exit 0.
            self._captured_signals.clear()

    from ember.server.slow_clients import header_timeout_protocol

    uv = uvicorn.Config(app, host=config.host, port=config.port, log_config=None, access_log=False,
                        timeout_graceful_shutdown=config.shutdown_timeout, lifespan="on",
                        timeout_keep_alive=config.keep_alive_timeout, limit_concurrency=config.max_connections,
                        http=header_timeout_protocol(config.header_timeout), h11_max_incomplete_event_size=65536,
                        ssl_certfile=config.ssl_certfile, ssl_keyfile=config.ssl_keyfile)
    server = Server(uv)

    def fatal():
        server.should_exit = True

    app.state.on_fatal = fatal
    server.run()
    return 1 if app.state.load_error else 0
