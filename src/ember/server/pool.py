"""The models one `ember serve` process serves, and how a request's `model` field finds one of them.

    ember serve --model smollm2-135m-instruct --model minilm-l6-v2 --model my-model@production

A served model's id (in /v1/models and in responses) is the reference it was started with, exactly as
typed: that is the name clients already know. A request may also name it by any other reference to the
same version (`name`, `name:N`, `name@alias`); those are resolved through the registry (cached briefly)
and matched by version. Decoder models (llama, mistral, gpt2) serve completions and chat; encoder models
(BERT family) serve embeddings, and by their head classify, tag, rerank and score (engine/encoders.py). A
registered version not named at start that descends from a served model (a fine-tuning job's result) is loaded
on demand (`ensure`), up to MAX_ON_DEMAND of them.
"""

import logging
import threading
import time
from dataclasses import dataclass, field

from ember.errors import EmberError, InvalidRequest, NotFound, Unsupported
from ember.server.admission import Admission

log = logging.getLogger("ember.server")
DEFAULT_MODELS = ["smollm2-135m-instruct", "minilm-l6-v2"]
MAX_ON_DEMAND = 4  # registered versions (fine-tuning results) a server loads when first asked for


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
                 quantize: str | None = None, max_queue_per_key: int | None = None, speculative=None):
        self.refs = list(dict.fromkeys(refs or DEFAULT_MODELS))
        self.settings = settings
        self.max_slots, self.max_queue, self.max_seq_len, self.quantize = max_slots, max_queue, max_seq_len, quantize
        self.max_queue_per_key = max_queue_per_key
        self.speculative = speculative  # engine.speculative.SpecConfig or None
        self.models: dict[str, ServedModel] = {}
        self._alias_cache: dict[str, tuple[float, str | None]] = {}
        self._dynamic: list[str] = []  # versions loaded on demand (fine-tuning results), at most MAX_ON_DEMAND
        self._loading: dict[str, threading.Event] = {}
        self._dynamic_lock = threading.Lock()

    def all(self) -> list[ServedModel]:
        return list(self.models.values())

    @property
    def ready(self) -> bool:
        return bool(self.models) and len(self.models) == len(self.refs) and all(m.loaded for m in self.models.values())

    def load(self) -> None:
        """Resolve (pulling catalog models when needed) and load every model; runs in a background thread."""
        for ref in self.refs:
            self.models[ref] = self._load_one(ref)

    def _load_one(self, ref: str) -> ServedModel:
        t = time.perf_counter()
        info = resolve_or_pull(ref, self.settings)
        kind = model_kind(info.metadata)
        served = ServedModel(ref, info.ref, kind, info.metadata, int(info.created_at.timestamp()),
                             Admission(self.max_slots if kind == "generate" else 4, self.max_queue,
                                       self.max_queue_per_key))
        if kind == "generate":
            from ember.engine.engine import Engine

            served.engine = Engine.load(info.ref, self.settings, max_slots=self.max_slots,
                                        max_seq_len=self.max_seq_len, quantize=self.quantize,
                                        speculative=self.speculative)
        else:
            from ember.server.embeddings import load_encoder

            served.encoder = load_encoder(info.ref, self.settings)
        log.info("loaded %s (%s, %s) in %.1fs", ref, info.ref, kind, time.perf_counter() - t)
        return served

    def ensure(self, ref: str) -> ServedModel:
        """Serve a registered version not named at start (a fine-tuning job's result), loading it once.

        Blocking: the job worker calls it before it reports the job succeeded, so `fine_tuned_model` answers
        at once; a request naming such a version starts the load in a thread and gets 503 until it is done.
        """
        from ember.store import registry

        try:
            version = registry.resolve(ref, self.settings).ref
        except EmberError:
            version = None
        with self._dynamic_lock:
            found = next((m for m in self.models.values() if version and m.ref == version), None)
            if found is not None:
                return found
            if version is None:
                raise NotFound(f"the model {ref!r} does not exist", param="model", code="model_not_found")
            if len(self._dynamic) >= MAX_ON_DEMAND:
                raise NotFound(f"the model {ref!r} is not served here and {MAX_ON_DEMAND} models were already "
                               "loaded on demand; restart the server with --model", param="model",
                               code="model_not_found")
            event = self._loading.get(version)
            owner = event is None
            if owner:
                event = self._loading[version] = threading.Event()
        if not owner:
            event.wait()
            return self.ensure(ref)
        try:
            served = self._load_one(version)
            with self._dynamic_lock:
                self.models[version] = served
                self.refs.append(version)
                self._dynamic.append(version)
            return served
        finally:
            with self._dynamic_lock:
                self._loading.pop(version, None)
            event.set()

    def _derived(self, name: str) -> bool:
        """Whether `name` descends from a served model (a fine-tune of it): only those load on demand, so a
        request cannot make the server load any model of the registry."""
        from ember.store import registry

        try:
            lineage = registry.resolve(name, self.settings).lineage
        except EmberError:
            return False
        served = {m.ref for m in self.models.values()}
        return any(ref in served for ref in lineage)

    def _load_in_background(self, name: str, version: str) -> None:
        from ember.server.errors import NotReady

        with self._dynamic_lock:
            busy = version in self._loading
        if not busy and len(self._dynamic) < MAX_ON_DEMAND:
            def load():
                try:
                    self.ensure(version)
                except Exception:
                    log.exception("loading %s on demand failed", version)
            threading.Thread(target=load, name=f"load-{version}", daemon=True).start()
        elif not busy:
            return
        raise NotReady(f"the model {name!r} is being loaded; retry in a few seconds")

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

    def get(self, name: str | None, kind: str) -> ServedModel:
        """The served model a request names (or the only one of `kind` when it names none)."""
        if not name:
            of_kind = [m for m in self.models.values() if m.kind == kind]
            if len(of_kind) == 1:
                return of_kind[0]
            raise InvalidRequest("the 'model' parameter is required", param="model")
        served = self.models.get(name)
        if served is None:
            version = self._version_of(name)
            served = next((m for m in self.models.values() if version and m.ref == version), None)
            if served is None and version is not None and self.ready and self._derived(name):
                self._load_in_background(name, version)
        if served is None:
            raise NotFound(f"the model {name!r} does not exist or is not served here (see /v1/models)",
                           param="model", code="model_not_found")
        if served.kind != kind:
            what = "completions and chat" if kind == "generate" else "embeddings"
            raise InvalidRequest(f"the model {served.id!r} does not serve {what}", param="model",
                                 code="model_not_supported")
        return served
