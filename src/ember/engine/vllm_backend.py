"""GPU serving through vLLM: the engine `ember serve --backend vllm` puts behind Ember's API.

    pip install vllm                                     # on a machine with a CUDA GPU
    ember serve --backend vllm --model my-model@production --max-slots 128

`VllmEngine` has the interface the server uses of Ember's own `Engine` (engine/engine.py): `encode`,
`check`, `chat_prompt`, `compile_constraint`, `add_request(ids, params, on_delta)`, `abort`, `generate`,
`stream`, `score`, the counters behind /metrics and `close`. Everything in front of it is Ember's: routes,
keys, limits, admission, error shapes, the registry (a version is materialized to a folder and vLLM loads
that folder). Request validation is the same code as the CPU engine's (`check`, `encode` and `chat_prompt`
are Engine's own functions), so a request refused on one backend is refused the same way on the other.

vLLM's `AsyncLLM` is asyncio-native while the server hands requests to engines synchronously with a callback
(server/generation.py), so the adapter owns one event loop on a thread of its own: `add_request` schedules
the request's consumer coroutine there, and each vLLM `RequestOutput` (DELTA kind) becomes Ember `Delta`s
(`deltas_of`), passed to the callback. `to_vllm` / `from_vllm` map SamplingParams between the two
(vLLM's names were Ember's to begin with, so the mapping is mostly one to one). vllm is imported lazily:
`import ember` and the CPU engine never need it.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from dataclasses import dataclass, field
from types import SimpleNamespace

from ember.engine import structured
from ember.engine.backends import check_available  # noqa: F401 - VllmEngine.load's check, also the CLI's
from ember.engine.engine import Engine
from ember.engine.sampling import SamplingParams
from ember.engine.scheduler import Delta, Usage
from ember.errors import InvalidRequest, Overloaded, Unsupported

# Ember's constraint kinds -> the keys of vLLM's StructuredOutputsParams (GuidedDecodingParams before 0.11).
_STRUCTURED = {"json_schema": "json", "json_object": "json_object", "regex": "regex", "choice": "choice",
               "grammar": "grammar"}


# ----- SamplingParams, both ways -----
def to_vllm(p: SamplingParams, max_tokens: int) -> dict:
    """vLLM SamplingParams keyword arguments for an Ember request that may generate `max_tokens` tokens
    (Engine.check's answer). Scoring (max_tokens 0) asks vLLM for one token, which `deltas_of` drops."""
    if p.use_beam_search:
        raise Unsupported("beam search is not served by --backend vllm; use n/best_of sampling or the ember "
                          "backend", param="use_beam_search")
    kw = {"n": p.n, "max_tokens": max(1, max_tokens), "temperature": p.temperature, "top_p": p.top_p,
          "top_k": p.top_k if p.top_k > 0 else -1, "min_p": p.min_p, "repetition_penalty": p.repetition_penalty,
          "presence_penalty": p.presence_penalty, "frequency_penalty": p.frequency_penalty,
          "seed": p.seed, "stop": list(p.stop), "stop_token_ids": list(p.stop_token_ids),
          "ignore_eos": p.ignore_eos, "logprobs": p.logprobs, "prompt_logprobs": p.prompt_logprobs,
          "skip_special_tokens": p.skip_special_tokens}
    if p.logit_bias:
        kw["logit_bias"] = dict(p.logit_bias)
    if p.constraint is not None:
        c = p.constraint
        kw["structured_outputs"] = {_STRUCTURED[c.kind]: True if c.kind == "json_object" else c.value}
    return kw


def from_vllm(kw: dict) -> SamplingParams:
    """The Ember SamplingParams of vLLM keyword arguments (the inverse of `to_vllm` for generation)."""
    so = kw.get("structured_outputs") or {}
    constraint = None
    if so:
        key, value = next(iter(so.items()))
        kind = {v: k for k, v in _STRUCTURED.items()}[key]
        constraint = structured.Constraint(kind, None if kind == "json_object" else value)
    return SamplingParams(
        max_tokens=kw.get("max_tokens", 16), temperature=kw.get("temperature", 1.0), top_p=kw.get("top_p", 1.0),
        top_k=max(0, kw.get("top_k", 0) or 0), min_p=kw.get("min_p", 0.0),
        repetition_penalty=kw.get("repetition_penalty", 1.0), presence_penalty=kw.get("presence_penalty", 0.0),
        frequency_penalty=kw.get("frequency_penalty", 0.0), logit_bias=kw.get("logit_bias") or {},
        seed=kw.get("seed"), stop=kw.get("stop") or [], stop_token_ids=kw.get("stop_token_ids") or [],
        ignore_eos=kw.get("ignore_eos", False), n=kw.get("n", 1), logprobs=kw.get("logprobs"),
        prompt_logprobs=kw.get("prompt_logprobs"), skip_special_tokens=kw.get("skip_special_tokens", True),
        constraint=constraint)


def _real_params(kw: dict):
    """vllm.SamplingParams in DELTA mode (each output carries only the new text and tokens)."""
    import vllm
    from vllm.sampling_params import RequestOutputKind

    kw = dict(kw)
    so = kw.pop("structured_outputs", None)
    if so is not None:
        try:
            from vllm.sampling_params import StructuredOutputsParams

            kw["structured_outputs"] = StructuredOutputsParams(**so)
        except ImportError:  # vllm < 0.11
            from vllm.sampling_params import GuidedDecodingParams

            kw["guided_decoding"] = GuidedDecodingParams(**so)
    return vllm.SamplingParams(**kw, output_kind=RequestOutputKind.DELTA)


def _real_llm(folder: str, max_slots: int, max_len: int, speculative=None):
    """vLLM's async engine over a materialized folder; created on the adapter's loop (it starts tasks there).
    `speculative` (engine.speculative.SpecConfig) maps to vLLM's own n-gram drafter."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    try:
        from vllm.v1.engine.async_llm import AsyncLLM
    except ImportError:  # vllm < 0.8
        from vllm import AsyncLLMEngine as AsyncLLM
    extra = {}
    if speculative is not None:
        extra["speculative_config"] = {"method": "ngram", "num_speculative_tokens": speculative.num_tokens,
                                       "prompt_lookup_max": speculative.ngram_max,
                                       "prompt_lookup_min": speculative.ngram_min}
    args = AsyncEngineArgs(model=folder, tokenizer=folder, max_num_seqs=max_slots, max_model_len=max_len,
                           trust_remote_code=False, disable_log_stats=True, **extra)
    return AsyncLLM.from_engine_args(args)


# ----- RequestOutput -> Delta -----
def _logprob_entry(token_id: int, options: dict | None, k: int, rank: bool = False) -> dict | None:
    """One token's {"token_id", "logprob", "top"} from vLLM's {token_id: Logprob(logprob, rank, ...)}."""
    if options is None:
        return None
    chosen = options.get(token_id)
    top = sorted(((int(t), float(lp.logprob)) for t, lp in options.items()
                  if lp.rank is not None and lp.rank <= k), key=lambda x: -x[1])[:k]
    entry = {"token_id": int(token_id), "logprob": float(chosen.logprob) if chosen is not None else float("-inf"),
             "top": top}
    if rank and chosen is not None and chosen.rank is not None:
        entry["rank"] = int(chosen.rank)
    return entry


@dataclass
class _Tracked:
    """One request in flight: what `deltas_of` needs to know between two outputs."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    on_delta: object
    generated: dict[int, int] = field(default_factory=dict)  # choice -> tokens so far
    finished: set[int] = field(default_factory=set)
    prompt_logprobs_sent: bool = False
    task: asyncio.Task | None = None
    done: bool = False


def deltas_of(out, t: _Tracked) -> list[Delta]:
    """Ember Deltas of one vLLM RequestOutput (DELTA kind); the request's last one carries the usage."""
    scoring = t.params.max_tokens == 0
    deltas = []
    prompt_lps = None
    if t.params.prompt_logprobs is not None and not t.prompt_logprobs_sent and out.prompt_logprobs is not None:
        k = t.params.prompt_logprobs
        prompt_lps = [None if i == 0 or opts is None else _logprob_entry(t.prompt_ids[i], opts, k, rank=True)
                      for i, opts in enumerate(out.prompt_logprobs)]
        t.prompt_logprobs_sent = True
    for o in out.outputs:
        if o.index in t.finished:
            continue
        ids = [] if scoring else list(o.token_ids)
        text = "" if scoring else o.text
        reason = "length" if scoring else o.finish_reason
        lps = None
        if t.params.logprobs is not None and o.logprobs and not scoring:
            lps = [_logprob_entry(tok, opts, t.params.logprobs) for tok, opts in zip(ids, o.logprobs[-len(ids):])]
        t.generated[o.index] = t.generated.get(o.index, 0) + len(ids)
        if reason is not None:
            t.finished.add(o.index)
        if ids or text or reason is not None or prompt_lps is not None:
            deltas.append(Delta(t.request_id, o.index, text, ids, lps, reason, prompt_logprobs=prompt_lps))
            prompt_lps = None
    if len(t.finished) == t.params.n:
        t.done = True
        if deltas:
            deltas[-1].usage = Usage(len(t.prompt_ids), sum(t.generated.values()),
                                     int(getattr(out, "num_cached_tokens", 0) or 0))
    return deltas


class VllmEngine:
    """Ember's engine interface over a vLLM AsyncLLM (or any object with its `generate`/`abort`/`shutdown`)."""

    backend = "vllm"
    # Validation and prompt building are the CPU engine's own functions: one rule for both backends.
    encode = Engine.encode
    count_tokens = Engine.count_tokens
    chat_prompt = Engine.chat_prompt
    generate = Engine.generate
    score = Engine.score
    stream = Engine.stream

    def __init__(self, llm_factory, tokenizer, *, vocab_size: int, context_length: int, eos_ids=(),
                 max_slots: int = 32, max_waiting: int = 4096, make_params=_real_params):
        self.tokenizer = tokenizer
        self.eos_ids = list(eos_ids)
        self.model = SimpleNamespace(vocab_size=vocab_size, max_positions=context_length)
        self.context_length = context_length
        self.max_slots, self.max_waiting = max_slots, max_waiting
        self._make_params = make_params
        self._requests: dict[str, _Tracked] = {}
        # What the server's life cycle (engine/model_set.py, server/residency.py) reads of an engine: no Ember
        # KV cache or LoRA cache here (vLLM owns GPU memory), nothing queued outside vLLM.
        self.cache = None
        self.adapters = None
        self.pins = 0
        self._inbox = SimpleNamespace(empty=lambda: True)
        self.sched = SimpleNamespace(has_work=lambda: bool(self._requests))
        self._closed = False
        self.steps = 0  # vLLM's own steps are not visible here; outputs received instead
        self.generated_tokens = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ember-vllm", daemon=True)
        self._thread.start()
        self.llm = self._call(_async(llm_factory))

    @classmethod
    def load(cls, ref_or_path, settings=None, *, max_slots: int = 32, max_seq_len: int = 2048,
             step_tokens: int = 256, threads: int | None = None, quantize: str | None = None,
             max_adapters: int = 0, speculative=None) -> "VllmEngine":
        """A registry reference (or folder) served by vLLM on the GPU; refuses cleanly without vllm or CUDA."""
        from ember.models.loading import load_tokenizer, read_json, resolve_folder

        if quantize:
            raise InvalidRequest("--quantize is the CPU engine's; with --backend vllm serve a quantized "
                                 "checkpoint instead", param="quantize")
        check_available()
        folder = resolve_folder(ref_or_path, settings)
        cfg = read_json(folder / "config.json")
        gen = read_json(folder / "generation_config.json") if (folder / "generation_config.json").exists() else {}
        positions = int(cfg.get("max_position_embeddings") or cfg.get("n_positions") or max_seq_len)
        context = min(max_seq_len, positions)
        tok = load_tokenizer(folder)
        eos = gen.get("eos_token_id", cfg.get("eos_token_id"))
        eos = [] if eos is None else eos if isinstance(eos, list) else [eos]
        return cls(lambda: _real_llm(str(folder), max_slots, context, speculative), tok,
                   vocab_size=int(cfg["vocab_size"]), context_length=context, eos_ids=eos, max_slots=max_slots)

    # ----- counters the server exports as metrics -----
    @property
    def num_running(self) -> int:
        return len(self._requests)

    @property
    def num_waiting(self) -> int:
        return 0  # vLLM queues internally; Ember's admission queue in front of it is what /metrics shows

    @property
    def cache_usage(self) -> float:
        """Sequences in flight over --max-slots (vLLM's own KV block usage is in its own metrics)."""
        return min(1.0, sum(t.params.n for t in list(self._requests.values())) / self.max_slots)

    def stats(self) -> dict:
        return {"running": self.num_running, "waiting": 0, "cache_usage": self.cache_usage, "steps": self.steps,
                "generated_tokens": self.generated_tokens, "backend": "vllm"}

    # ----- validation -----
    def check(self, ids: list[int], p: SamplingParams, param: str = "prompt") -> int:
        if p.use_beam_search:
            raise Unsupported("beam search is not served by --backend vllm", param="use_beam_search")
        return Engine.check(self, ids, p, param)

    def compile_constraint(self, c: structured.Constraint):
        """The same size/depth/syntax checks as the CPU engine; vLLM compiles the grammar itself."""
        structured.grammar_text(c)
        return c

    def beam_search(self, prompt, params: SamplingParams, cancelled=None):
        raise Unsupported("beam search is not served by --backend vllm", param="use_beam_search")

    # ----- requests -----
    def add_request(self, prompt, params: SamplingParams, on_delta, request_id: str | None = None,
                    adapter: str | None = None) -> str:
        if self._closed:
            raise InvalidRequest("the engine is closed")
        if adapter is not None:
            raise Unsupported("unmerged LoRA adapters are not served by --backend vllm; merge the adapter "
                              "(`ember models merge`) and serve the merged model", param="model")
        ids = self.encode(prompt)
        max_tokens = self.check(ids, params)
        if params.constraint is not None:
            self.compile_constraint(params.constraint)
        if len(self._requests) >= self.max_waiting:
            raise Overloaded("the engine's queue is full", retry_after=1)
        sp = self._make_params(to_vllm(params, max_tokens))
        rid = request_id or uuid.uuid4().hex
        t = self._requests[rid] = _Tracked(rid, ids, params, on_delta)
        prompt_in = {"prompt_token_ids": ids}
        if params.cache_salt:  # prefix caching only between requests of the same key (as the CPU engine)
            prompt_in["cache_salt"] = params.cache_salt
        asyncio.run_coroutine_threadsafe(self._start(t, prompt_in, sp), self._loop)
        return rid

    async def _start(self, t: _Tracked, prompt_in: dict, sp) -> None:
        t.task = asyncio.current_task()
        try:
            async for out in self.llm.generate(prompt_in, sp, request_id=t.request_id):
                self.steps += 1
                for d in deltas_of(out, t):
                    self.generated_tokens += len(d.token_ids)
                    self._emit(t, d)
                if t.done:
                    break
        except asyncio.CancelledError:
            self._end(t, "abort")
            return
        except Exception:  # noqa: BLE001 - like the CPU engine: a failure ends the request, never hangs it
            import logging

            logging.getLogger(__name__).exception("vLLM request %s failed", t.request_id)
            self._end(t, "error")
            return
        finally:
            self._requests.pop(t.request_id, None)
        if not t.done:
            self._end(t, "abort")

    def _end(self, t: _Tracked, reason: str) -> None:
        """Finishes every unfinished choice with `reason`; the last delta carries the usage."""
        if t.done:
            return
        left = [i for i in range(t.params.n) if i not in t.finished]
        t.done = True
        for j, i in enumerate(left):
            last = j == len(left) - 1
            self._emit(t, Delta(t.request_id, i, "", [], None, reason,
                                Usage(len(t.prompt_ids), sum(t.generated.values())) if last else None))

    def _emit(self, t: _Tracked, d: Delta) -> None:
        try:
            t.on_delta(d)
        except Exception:  # noqa: BLE001 - a consumer that went away must not stop the loop
            if t.task is not None and d.finish_reason is None:
                t.task.cancel()

    def abort(self, request_id: str, wait: bool = False) -> None:
        """Stops the request in vLLM (its KV blocks are freed) and ends it with finish_reason "abort"."""
        async def stop():
            t = self._requests.get(request_id)
            await self.llm.abort(request_id)
            if t is not None and t.task is not None and not t.task.done():
                t.task.cancel()

        if self._closed or not self._loop.is_running():
            return
        fut = asyncio.run_coroutine_threadsafe(stop(), self._loop)
        if wait and threading.current_thread() is not self._thread:
            fut.result()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for rid in list(self._requests):
            self.abort(rid, wait=True)
        shutdown = getattr(self.llm, "shutdown", None)
        if shutdown is not None:
            shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()


async def _async(factory):
    """Runs a factory on the adapter's loop: vLLM's AsyncLLM starts its output task on the running loop."""
    return factory()
