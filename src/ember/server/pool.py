"""The models one `ember serve` process serves, and how a request's `model` field finds one of them.

    ember serve --model smollm2-135m-instruct --model minilm-l6-v2 --model my-model@production

A served model's id (in /v1/models and in responses) is the reference it was started with, exactly as
typed: that is the name clients already know. A request may also name it by any other reference to the
same version (`name`, `name:N`, `name@alias`); those are resolved through the registry (cached briefly)
and matched by version. Decoder models (llama, mistral, gpt2) serve completions and chat; encoder models
(BERT family) serve embeddings, and by their head classify, tag, rerank and score (engine/encoders.py).
A LoRA adapter version whose parent is served is served unmerged by its base's engine (`AdapterView`).
Anything loaded after start goes through one mechanism, `residency.ensure` (`Pool.ensure` for the job
worker): a model unloaded by keep_alive or for memory, a registered version descending from a served model
(a fine-tuning job's result, up to MAX_ON_DEMAND at once), or any version an admin loads (/api/models/load).
"""

import logging
import threading
import time
from dataclasses import dataclass, field

from ember.errors import EmberError, InvalidRequest, NotFound, Unsupported
from ember.server.admission import Admission

log = logging.getLogger("ember.server")
DEFAULT_MODELS = ["smollm2-135m-instruct", "minilm-l6-v2"]
MAX_ON_DEMAND = 4  # versions a request or a job may make the server load (fine-tuning results) at once


@dataclass
class ServedModel:
    id: str  # the reference as given on the command line
    ref: str  # name:N it resolved to at start
    kind: str  # "generate" | "embed"
    metadata: dict
    created: int
    admission: Admission
    engine: object | None = None
    encoder: object | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Life cycle (server/follow.py): the last load that failed (the old version keeps serving) and why.
    failed_ref: str | None = None
    error: str | None = None
    swaps: int = 0
    # Residency (server/residency.py): seconds idle before unloading (None: never); an unloaded model keeps
    # its entry and loads again on its next request.
    keep_alive: float | None = None
    last_used: float = field(default_factory=time.monotonic)
    unloaded: bool = False
    on_demand: bool = False  # loaded because a request or a job named it (counts toward MAX_ON_DEMAND)

    @property
    def tokenizer(self):
        return self.engine.tokenizer if self.engine is not None else self.encoder.tokenizer

    @property
    def context_length(self) -> int:
        if self.engine is not None:
            return int(self.engine.context_length)
        return int(getattr(self.encoder, "max_length", 512))

    @property
    def loaded(self) -> bool:
        return self.engine is not None or self.encoder is not None


class AdapterView:
    """A LoRA adapter served by its base's engine (unmerged): the base's engine, admission and tokenizer,
    the adapter's own id (as the request named it) and version; Run passes `adapter` to the engine."""

    def __init__(self, base: ServedModel, name: str, ref: str):
        self.base, self.id, self.ref, self.adapter = base, name, ref, ref

    def __getattr__(self, attr):
        return getattr(self.base, attr)


def model_kind(metadata: dict) -> str:
    """"generate" or "embed": the engine decides, so a type it cannot load is refused before loading."""
    from ember.engine.encoders import DECODERS, ENCODER_TYPES, kind_of

    mtype = (metadata.get("model_type") or "").lower()
    kind = kind_of(mtype)
    if kind is None:
        raise Unsupported(f"model_type {mtype or '(unknown)'!r} cannot be served: Ember serves decoders "
                          f"({', '.join(sorted(DECODERS))}) and encoders ({', '.join(sorted(ENCODER_TYPES))})")
    return kind


def resolve_or_pull(ref: str, settings):
    """The registry version behind `ref`; a bundled catalog name not yet in the registry is pulled first."""
    from ember.store import importers, registry

    try:
        return registry.resolve(ref, settings)
    except NotFound:
        if ref not in importers.CATALOG:
            raise
        log.info("pulling %s from the bundled catalog (first start: this takes a minute)", ref)
        return importers.pull(ref, settings)


class Pool:
    def __init__(self, refs: list[str], settings, *, max_slots: int, max_queue: int, max_seq_len: int,
                 quantize: str | None = None, max_queue_per_key: int | None = None, keep_alive: float | None = None,
                 max_memory: int | None = None, max_adapters: int = 8, backend: str = "ember", speculative=None):
        self.backend = backend  # "ember" (the CPU engine) or "vllm" (engine/vllm_backend.py, GPU)
        self.refs = list(dict.fromkeys(refs or DEFAULT_MODELS))
        self.settings = settings
        self.max_slots, self.max_queue, self.max_seq_len, self.quantize = max_slots, max_queue, max_seq_len, quantize
        self.max_queue_per_key = max_queue_per_key
        self.speculative = speculative  # engine.speculative.SpecConfig or None
        self.models: dict[str, ServedModel] = {}
        self._alias_cache: dict[str, tuple[float, str | None]] = {}
        self.keep_alive = keep_alive  # given to each model it loads (server/residency.py); None: forever
        self.max_memory = max_memory  # bytes of weights + caches (--max-memory); None: no budget
        self.max_adapters = max_adapters  # LoRA adapters resident per base engine (models/lora.py), LRU beyond
        self.lifecycle = None  # server/follow.Lifecycle (load/unload counters), set by the app
        self.lock = threading.Lock()  # guards models/refs changes made from worker threads
        self.loading: dict[str, threading.Event] = {}  # loads in progress, so concurrent callers wait for one

    def all(self) -> list[ServedModel]:
        return list(self.models.values())

    @property
    def ready(self) -> bool:
        return (bool(self.models) and len(self.models) == len(self.refs)
                and all(m.loaded or m.unloaded for m in self.models.values()))

    def load(self) -> None:
        """Resolve (pulling catalog models when needed) and load every model; runs in a background thread."""
        for ref in list(self.refs):
            self.models[ref] = self._load_one(ref)

    def _load_one(self, ref: str) -> ServedModel:
        t = time.perf_counter()
        info = resolve_or_pull(ref, self.settings)
        kind = model_kind(info.metadata)
        served = ServedModel(ref, info.ref, kind, info.metadata, int(info.created_at.timestamp()),
                             Admission(self.max_slots if kind == "generate" else 4, self.max_queue,
                                       self.max_queue_per_key))
        if kind == "generate":
            if self.backend == "vllm":
                from ember.engine.vllm_backend import VllmEngine as Engine
            else:
                from ember.engine.engine import Engine

            served.engine = Engine.load(info.ref, self.settings, max_slots=self.max_slots,
                                        max_seq_len=self.max_seq_len, quantize=self.quantize,
                                        max_adapters=self.max_adapters, speculative=self.speculative)
        else:
            from ember.server.embeddings import load_encoder

            served.encoder = load_encoder(info.ref, self.settings)
        served.keep_alive = self.keep_alive
        log.info("loaded %s (%s, %s) in %.1fs", ref, info.ref, kind, time.perf_counter() - t)
        return served

    def ensure(self, ref: str):
        """The served model `ref` names, loaded now if it is not in memory (blocking; see residency.ensure).
        The job worker calls it before a fine-tuning job reports success, so `fine_tuned_model` answers at once."""
        from ember.server import residency

        return residency.ensure(self, ref)

    def add(self, served: ServedModel) -> None:
        with self.lock:
            self.models[served.id] = served
            if served.id not in self.refs:
                self.refs.append(served.id)

    def derived(self, lineage: list[str]) -> bool:
        """Whether a version descends from a served model (a fine-tune of it): only those load on demand, so
        a request cannot make the server load any model of the registry."""
        served = {m.ref for m in self.models.values()}
        return any(ref in served for ref in lineage)

    def find(self, name: str | None, kind: str | None = None):
        """The served model (or adapter view) `name` names, loaded or not, without loading anything; None when
        nothing served matches. No name: the only model of `kind` (or the only model)."""
        if not name:
            of_kind = [m for m in self.models.values() if kind is None or m.kind == kind]
            return of_kind[0] if len(of_kind) == 1 else None
        served = self.models.get(name)
        if served is None:
            version = self._version_of(name)
            served = next((m for m in self.models.values() if version and m.ref == version), None)
        if served is None and kind in (None, "generate"):
            served = self._adapter_of(name)
        return served

    def close(self) -> None:
        for m in self.models.values():
            if m.engine is not None:
                m.engine.close()

    def _version_of(self, name: str) -> str | None:
        now = time.monotonic()
        hit = self._alias_cache.get(name)
        if hit and now - hit[0] < 5:
            return hit[1]
        from ember.store import registry

        try:
            ref = registry.resolve(name, self.settings).ref
        except EmberError:
            ref = None
        self._alias_cache[name] = (now, ref)
        return ref

    def _adapter_of(self, name: str) -> "AdapterView | None":
        """A LoRA adapter version whose base (its registry parent) is served here: served unmerged by it."""
        now = time.monotonic()
        hit = self._alias_cache.get("adapter:" + name)
        if hit is None or now - hit[0] >= 5:
            from ember.store import registry

            try:
                info = registry.resolve(name, self.settings)
                hit = (now, (info.ref, info.parent) if info.kind == "adapter" else None)
            except EmberError:
                hit = (now, None)
            self._alias_cache["adapter:" + name] = hit
        if hit[1] is None:
            return None
        ref, parent = hit[1]
        base = next((m for m in self.models.values() if m.ref == parent and m.kind == "generate"), None)
        if base is None or not self._serves_adapters(base):
            return None
        return AdapterView(base, name, ref)

    def _serves_adapters(self, base: ServedModel) -> bool:
        if base.engine is not None:
            return base.engine.adapters is not None
        # unloaded (keep_alive): its engine will serve adapters once loaded again (engine.Engine.load)
        return self.max_adapters > 0 and (base.metadata.get("model_type") or "").lower() in ("llama", "mistral")

    def adapter_cards(self) -> list[dict]:
        """/v1/models entries for the registry's adapters whose base is served here (listed with `parent`)."""
        from ember.store import registry

        bases = {m.ref: m for m in self.models.values() if m.kind == "generate" and m.engine is not None
                 and m.engine.adapters is not None}
        if not bases:
            return []
        cards = []
        for v in registry.list_versions(settings=self.settings):
            if v.kind == "adapter" and v.parent in bases and "latest" in v.aliases:
                cards.append({"id": v.name, "object": "model", "created": int(v.created_at.timestamp()),
                              "owned_by": "ember", "root": v.ref, "parent": bases[v.parent].id,
                              "max_model_len": bases[v.parent].context_length, "capabilities": ["completions", "chat"]})
        return cards

    def get(self, name: str | None, kind: str) -> ServedModel:
        """The served model a request names (or the only one of `kind` when it names none)."""
        if not name:
            served = self.find(None, kind)
            if served is None:
                raise InvalidRequest("the 'model' parameter is required", param="model")
            return served
        served = self.find(name, kind)
        if served is None:
            raise NotFound(f"the model {name!r} does not exist or is not served here (see /v1/models)",
                           param="model", code="model_not_found")
        if served.kind != kind:
            what = "completions and chat" if kind == "generate" else "embeddings"
            raise InvalidRequest(f"the model {served.id!r} does not serve {what}", param="model",
                                 code="model_not_supported")
        return served
