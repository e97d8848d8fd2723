"""Engine: continuous batching over one decoder, with sync (`generate`) and async (`stream`) front doors.

    engine = Engine.load("smollm2-135m-instruct", max_slots=32, max_seq_len=2048)
    print(engine.generate(["The capital of France is"], SamplingParams(temperature=0, max_tokens=20))[0].text)

    engine.score(["The capital of France is Paris"], k=1)   # prompt logprobs, nothing generated

One background thread per engine runs the step loop; each step is vLLM's schedule -> execute -> update:
the scheduler picks the step's sequences (`SchedulerOutput`), the forward, the sampling of every row at once
and the logprobs (engine/model_runner.py) run on the process's compute thread (engine/compute.py, where all
of Ember's heavy torch work runs), and the update (cache positions and states, detokenization, stop checks,
deltas to callers) runs back on the engine thread, so the compute thread is free for other work meanwhile.
Callers only put requests on a queue, so `stream` never blocks an event loop; deltas come back to it through
`loop.call_soon_threadsafe`. Scoring (`prompt_logprobs`, `max_tokens=0`) is a prefill whose logits at every
prompt position become logprobs: it is batched and chunked like any other prompt.
"""

import asyncio
import logging
import queue
import threading
import uuid

import torch

from ember.engine import beam, compute, model_runner, structured
from ember.engine.chat_render import render_ids
from ember.engine.detok import Detokenizer
from ember.engine.model_runner import StepResult
from ember.engine.sampling import SamplingParams, seeded_generator
from ember.engine.scheduler import (
    Choice,
    Collector,
    Completion,
    Delta,
    Request,
    Scheduler,
    SchedulerOutput,
    Sequence,
    Usage,
)
from ember.engine.speculative import NgramDrafter, SpecConfig, SpecStats
from ember.errors import InvalidRequest, Overloaded
from ember.models.loading import LoadedModel, load_model

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, loaded: LoadedModel, max_slots: int = 32, max_seq_len: int = 2048, step_tokens: int = 256,
                 max_waiting: int = 4096, speculative: SpecConfig | None = None):
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.eos_ids = loaded.eos_token_ids
        self.context_length = min(max_seq_len, self.model.max_positions)
        self.max_slots, self.max_waiting = max_slots, max_waiting
        self.cache = self.model.make_cache(max_slots, self.context_length)
        self.spec = speculative
        self.spec_stats = SpecStats()
        drafter = NgramDrafter(speculative, self.context_length) if speculative else None
        self.sched = Scheduler(max_slots, step_tokens, drafter)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._requests: dict[str, Request] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self._start_lock = threading.Lock()
        self.steps = 0
        self.generated_tokens = 0
        self._structured: structured.Structured | None = None
        self._grammars: dict = {}  # compiled constraint templates, most recent last
        self.adapters = None  # engine/model_set.AdapterCache: unmerged LoRA adapters served on this base

    @classmethod
    def load(cls, ref_or_path, settings=None, *, max_slots: int = 32, max_seq_len: int = 2048,
             step_tokens: int = 256, threads: int | None = None, quantize: str | None = None,
             max_adapters: int = 0, speculative: SpecConfig | None = None) -> "Engine":
        """ref_or_path: an existing HF folder, or a registry reference (`name`, `name:3`, `name@prod`).
        quantize="int8": dynamic int8 weights for the projections (faster, not bit-equal to transformers).
        speculative: n-gram drafting verified k tokens per step (engine/speculative.py)."""
        threads = threads or (settings.threads if settings is not None and settings.threads else None)
        if threads:
            compute.set_threads(threads)
        loaded = compute.run(load_model, ref_or_path, settings, quantize=quantize)
        engine = cls(loaded, max_slots=max_slots, max_seq_len=max_seq_len, step_tokens=step_tokens,
                     speculative=speculative)
        if max_adapters > 0 and getattr(loaded.model, "family", None) == "llama":
            from ember.engine.model_set import AdapterCache

            engine.adapters = AdapterCache(loaded.model, max_adapters, settings)
        return engine

    # ----- counters the server exports as metrics -----
    @property
    def num_running(self) -> int:
        return len(self.sched.running)

    @property
    def num_waiting(self) -> int:
        return len(self.sched.waiting)

    @property
    def cache_usage(self) -> float:
        """Fraction of cache slots held by running sequences."""
        return self.sched.used_slots / self.max_slots

    def stats(self) -> dict:
        st = {"running": self.num_running, "waiting": self.num_waiting, "cache_usage": self.cache_usage,
              "steps": self.steps, "generated_tokens": self.generated_tokens}
        if self.spec is not None:
            ss = self.spec_stats
            st["spec_decode"] = {"num_drafts": ss.num_drafts, "num_draft_tokens": ss.num_draft_tokens,
                                 "num_accepted_tokens": ss.num_accepted_tokens,
                                 "acceptance_rate": ss.acceptance_rate}
        return st

    # ----- prompts -----
    def encode(self, prompt: str | list[int]) -> list[int]:
        if not isinstance(prompt, list) and self.tokenizer is None:
            raise InvalidRequest("this model has no tokenizer; give the prompt as token ids", param="prompt")
        ids = list(prompt) if isinstance(prompt, list) else self.tokenizer(prompt)["input_ids"]
        if not ids:
            bos = self.tokenizer.bos_token_id if self.tokenizer is not None else None
            if bos is None:
                raise InvalidRequest("the prompt is empty", param="prompt")
            ids = [bos]
        if any(not 0 <= int(t) < self.model.vocab_size for t in ids):
            raise InvalidRequest("prompt token id out of range", param="prompt")
        return [int(t) for t in ids]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    def chat_prompt(self, messages: list[dict], add_generation_prompt: bool = True,
                    tools: list[dict] | None = None) -> list[int]:
        """Renders messages with the model's own chat template (transformers renders it in a sandboxed
        Jinja environment) and returns token ids; the template already holds any special tokens."""
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            raise InvalidRequest("this model has no chat template; use a plain completion instead")
        # Message text is never tokenized as control tokens (engine/chat_render.py).
        return render_ids(self.tokenizer, messages, add_generation_prompt, tools=tools)

    # ----- constrained decoding (engine/structured.py) -----
    def compile_constraint(self, c: "structured.Constraint"):
        """Compiles (or finds compiled) a constraint, within structured.COMPILE_SECONDS; raises InvalidRequest
        naming the problem. Blocking: the server calls it from a worker thread before add_request."""
        key = (c.kind, repr(c.value) if not isinstance(c.value, (dict, list)) else _json_key(c.value))
        hit = self._grammars.get(key)
        if hit is not None:
            return hit
        if self.tokenizer is None:
            raise InvalidRequest("structured output needs a model with a tokenizer", param=c.param)
        grammar = structured.grammar_text(c)  # cheap checks (size, depth, syntax) before anything is built
        with self._start_lock:
            if self._structured is None:
                self._structured = structured.Structured(self.tokenizer, self.eos_ids, self.model.vocab_size)
        m = structured.compile_with_deadline(self._structured, c, grammar)
        with self._start_lock:  # compiles run on several worker threads
            self._grammars[key] = m
            while len(self._grammars) > 128:
                self._grammars.pop(next(iter(self._grammars)))
        return m

    # ----- requests -----
    def check(self, ids: list[int], p: SamplingParams, param: str = "prompt") -> int:
        """Validates a request before it is queued (the server calls it before sending any header);
        returns the number of tokens it may generate. `param` names the request field in the error."""
        # Generating needs a free position after the prompt; scoring the prompt (max_tokens 0 with
        # prompt_logprobs) never feeds its last token, so it may be one token longer than the context.
        limit = self.context_length - 1
        if p.max_tokens == 0:
            limit += 1 + (p.prompt_logprobs is not None and p.n == 1)
        if len(ids) > limit:
            raise InvalidRequest(f"the prompt has {len(ids)} tokens; this model's context is "
                                 f"{self.context_length} tokens", param=param, code="context_length_exceeded")
        room = max(self.context_length - len(ids), 0)
        if p.max_tokens is not None and p.max_tokens > room:
            raise InvalidRequest(f"prompt ({len(ids)} tokens) + max_tokens ({p.max_tokens}) exceeds the context "
                                 f"length {self.context_length}", param="max_tokens", code="context_length_exceeded")
        if p.logit_bias and any(not 0 <= t < self.model.vocab_size for t in p.logit_bias):
            raise InvalidRequest("logit_bias token id out of range", param="logit_bias")
        return room if p.max_tokens is None else p.max_tokens

    def add_request(self, prompt, params: SamplingParams, on_delta, request_id: str | None = None,
                    adapter: str | None = None) -> str:
        """Queues a request; on_delta(Delta) is called from the engine thread. Returns the request id.
        adapter: a LoRA adapter (registry reference or folder) applied to this request's rows only."""
        if self._closed:
            raise InvalidRequest("the engine is closed")
        if params.use_beam_search:
            raise InvalidRequest("beam search runs through generate() or stream(), not add_request")
        ids = self.encode(prompt)
        max_tokens = self.check(ids, params)
        grammar = self.compile_constraint(params.constraint) if params.constraint is not None else None
        if self.num_waiting + len(self._requests) >= self.max_waiting:
            raise Overloaded("the engine's queue is full", retry_after=1)
        rid = request_id or uuid.uuid4().hex
        req = Request(rid, ids, params, on_delta)
        if adapter:
            if self.adapters is None:
                raise InvalidRequest("this engine serves no LoRA adapters (start it with max_adapters > 0)")
            req.adapter, req.adapter_ref = self.adapters.acquire(adapter), adapter
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(self.eos_ids))
        for i in range(params.n):
            gen = None if params.greedy else seeded_generator(params.seed, i)
            req.seqs.append(Sequence(req, i, ids, params, gen,
                                     Detokenizer(self.tokenizer, ids, params.stop, params.skip_special_tokens),
                                     max_tokens, logprobs=[] if params.logprobs is not None else None,
                                     parent=req.seqs[0] if i else None,
                                     prompt_logprobs=[None] if params.prompt_logprobs is not None and i == 0
                                     else None))
            if grammar is not None:
                req.seqs[-1].matcher = structured.new_matcher(grammar)
        req.stop_ids = stop_ids
        self._ensure_thread()
        self._inbox.put(("add", req))
        self._wake.set()
        return rid

    def abort(self, request_id: str, wait: bool = False) -> None:
        """Ends a request and frees its slots before the next step is scheduled. wait=True returns only once
        that has happened (the slot is free when abort returns)."""
        done = threading.Event()
        self._inbox.put(("abort", request_id, done))
        self._wake.set()
        if (wait and self._thread is not None and self._thread is not threading.current_thread()
                and not compute.on_compute_thread()):
            done.wait()

    def generate(self, prompts: list, params: SamplingParams | list[SamplingParams],
                 adapters: list[str | None] | None = None) -> list[Completion]:
        """Runs all prompts through the continuous batch together; returns completions in prompt order."""
        if isinstance(prompts, (str,)) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        plist = params if isinstance(params, list) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise InvalidRequest("one SamplingParams per prompt, or a single one for all")
        results: list[Completion | None] = [None] * len(prompts)
        pending, lock = [0], threading.Lock()
        all_done = threading.Event()
        encoded = [self.encode(pr) for pr in prompts]
        for ids, p in zip(encoded, plist):  # validate everything before anything starts running
            self.check(ids, p)
        for i, (ids, p) in enumerate(zip(encoded, plist)):
            if p.use_beam_search:
                results[i] = self.beam_search(ids, p)
                continue
            acc = Collector(ids)

            def on_delta(d, i=i, acc=acc):
                acc.add(d)
                if d.usage is not None:
                    results[i] = acc.completion(d)
                    with lock:
                        pending[0] -= 1
                        if pending[0] == 0:
                            all_done.set()

            with lock:
                pending[0] += 1
            self.add_request(ids, p, on_delta, adapter=adapters[i] if adapters else None)
        with lock:
            if pending[0] == 0:
                all_done.set()
        all_done.wait()
        return results

    def score(self, prompts: list, k: int = 0) -> list[list[dict | None]]:
        """Prompt logprobs of each prompt (text or token ids), nothing generated: per token
        {"token_id", "logprob", "top": [(id, logprob), ...k]}, the first entry None. Batched and chunked
        through the step loop like any prompt."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        p = SamplingParams(max_tokens=0, temperature=0, prompt_logprobs=k)
        return [c.prompt_logprobs for c in self.generate(list(prompts), p)]

    def beam_search(self, prompt, params: SamplingParams, cancelled=None) -> Completion | None:
        """Runs outside the continuous batch (its beams live in a private cache), one step at a time on the
        compute thread between the batch's steps. Returns None once cancelled() (checked every step) is true."""
        ids = self.encode(prompt)
        max_tokens = self.check(ids, params)
        beams = beam.beam_search(self.model, ids, params, max_tokens, self.eos_ids, cancelled)
        if beams is None:
            return None
        choices = []
        for i, (toks, reason) in enumerate(beams[: params.n]):
            text = (self.tokenizer.decode(toks, skip_special_tokens=params.skip_special_tokens)
                    if self.tokenizer is not None else "")
            choices.append(Choice(i, text, toks, reason))
        return Completion(uuid.uuid4().hex, ids, choices, Usage(len(ids), sum(len(c.token_ids) for c in choices)))

    async def stream(self, prompt, params: SamplingParams, request_id: str | None = None):
        """Yields Delta objects as tokens come; aborts the request if the consumer stops early."""
        loop = asyncio.get_running_loop()
        if params.use_beam_search:
            cancel = threading.Event()
            try:
                comp = await loop.run_in_executor(None, self.beam_search, prompt, params, cancel.is_set)
            finally:
                cancel.set()  # a consumer that stopped waiting stops the search at its next step
            for c in comp.choices:
                last = c.index == len(comp.choices) - 1
                yield Delta(comp.request_id, c.index, c.text, c.token_ids, None, c.finish_reason,
                            comp.usage if last else None)
            return
        q: asyncio.Queue = asyncio.Queue()
        rid = self.add_request(prompt, params, lambda d: loop.call_soon_threadsafe(q.put_nowait, d), request_id)
        finished = False
        try:
            while True:
                d = await q.get()
                yield d
                if d.usage is not None:
                    finished = True
                    return
        finally:
            if not finished:
                self.abort(rid)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    # ----- the engine thread -----
    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ember-engine", daemon=True)
                self._thread.start()

    def _drain(self) -> None:
        while True:
            try:
                msg = self._inbox.get_nowait()
            except queue.Empty:
                return
            if msg[0] == "add":
                req = msg[1]
                self._requests[req.request_id] = req
                self.sched.add(req.seqs)
            else:
                req = self._requests.get(msg[1])
                if req is not None:
                    for s in req.seqs:
                        if s.finish_reason is None:
                            self._finish(s, "abort", [], None)
                msg[2].set()

    def _run(self) -> None:
        while not self._closed:
            self._drain()
            if not self.sched.has_work():
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                self._step()
            except compute.Closed:  # the process is exiting with requests still running: nothing to report
                return
            except Exception:  # noqa: BLE001 - a bug must end the requests, not hang their callers
                log.exception("engine step failed; ending all running requests")
                for req in list(self._requests.values()):
                    for s in req.seqs:
                        if s.finish_reason is None:
                            self._finish(s, "error", [], None)

    def _step(self) -> None:
        """schedule -> execute -> update (vLLM's EngineCore.step). Runs on the engine thread; only the
        execution runs on the compute thread, so the scheduler is only ever touched by this thread."""
        out = self.sched.schedule()
        if out.empty:
            return
        result = compute.run(self._execute, out)
        self.steps += 1
        accepted = [len(toks) - 1 for _, toks in result.spec]
        self.sched.update(out, accepted)
        for s, lps in result.prompt_logprobs:
            s.prompt_logprobs.extend(lps)
        for (s, _), last in zip(out.prefill, out.last_chunk):
            if last and s.max_tokens == 0:  # a scoring request: the prompt is all it asked for
                self._finish(s, "length", [], None)
        for s, t, lp in result.sampled:
            self._advance(s, t, lp)
        for (s, toks), (_, d) in zip(result.spec, out.spec):
            self.spec_stats.num_drafts += 1
            self.spec_stats.num_draft_tokens += len(d)
            self.spec_stats.num_accepted_tokens += len(toks) - 1
            for t in toks:  # a stop, a stop string or a limit ends the row; its later tokens are dropped
                if s.finish_reason is not None:
                    break
                self._advance(s, t, None)

    @torch.inference_mode()
    def _execute(self, out: SchedulerOutput) -> StepResult:
        return model_runner.execute(self.model, self.cache, out, self._structured, lora=self.adapters is not None)

    def _advance(self, s: Sequence, t: int, lp: dict | None) -> None:
        s.output_ids.append(t)
        self.generated_tokens += 1
        if lp is not None:
            s.logprobs.append(lp)
        lps = [lp] if lp is not None else None
        if s.matcher is not None:
            state = structured.advance(s.matcher, t)
            if state == "error":  # the grammar engine gave up (fuel exhausted): the output is incomplete
                log.warning("constraint of request %s failed: %s", s.request.request_id, s.matcher.get_error())
                return self._finish(s, "length", [t], lps, s.detok.add(t) if t not in s.request.stop_ids else "")
            if state == "stop" and t not in s.request.stop_ids:  # complete: nothing more may follow
                return self._finish(s, "stop", [t], lps, s.detok.add(t))
        if t in s.request.stop_ids:
            return self._finish(s, "stop", [t], lps)
        text = s.detok.add(t)
        if s.detok.stopped:
            return self._finish(s, "stop", [t], lps, text)
        if len(s.output_ids) >= s.max_tokens or s.n_cached + 1 >= self.context_length:
            return self._finish(s, "length", [t], lps, text)
        self._emit(s.request, Delta(s.request.request_id, s.index, text, [t], lps,
                                    prompt_logprobs=_take_prompt_logprobs(s)))

    def _emit(self, req: Request, d: Delta) -> None:
        # A consumer that went away (closed event loop) must not take the whole batch down with it.
        try:
            req.on_delta(d)
        except Exception:  # noqa: BLE001
            log.warning("delta callback of request %s failed; aborting it", req.request_id, exc_info=True)
            if d.finish_reason is None:
                self._inbox.put(("abort", req.request_id, threading.Event()))

    def _finish(self, s: Sequence, reason: str, toks: list[int], lps, text: str = "") -> None:
        s.finish_reason = reason
        self.sched.release(s)
        req = s.request
        usage = None
        if req.finished:
            usage = req.usage()
            self._requests.pop(req.request_id, None)
            if req.adapter >= 0:
                self.adapters.release(req.adapter)
        self._emit(req, Delta(req.request_id, s.index, text + s.detok.flush(), toks, lps, reason, usage,
                              _take_prompt_logprobs(s)))


def _take_prompt_logprobs(s: Sequence) -> list | None:
    """A sequence's prompt logprobs, once: on its first delta."""
    if s.prompt_logprobs is None or s.prompt_logprobs_sent:
        return None
    s.prompt_logprobs_sent = True
    return s.prompt_logprobs


def _json_key(v) -> str:
    import json

    return json.dumps(v, sort_keys=True)
