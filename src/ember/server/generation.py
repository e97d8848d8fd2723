"""One generation request as the server runs it: admission, the engine requests behind it (one per prompt),
the merged stream of their deltas, abort on disconnect, and the metrics and log fields of the request.

    curl -N localhost:8000/v1/completions --json '{"prompt": ["a", "b"], "n": 2, "stream": true}'

`Run.events()` yields `(prompt_index, Delta)` in arrival order; Delta.index is the choice within its prompt.
Requests go to the engine with `add_request` rather than `stream` so that a bad request fails before any
response header is sent, and so that one abort path covers every way a request can end early (client gone,
shutdown, an error while formatting). Beam search runs in a worker thread through `engine.beam_search`,
which checks the run's cancel flag before every step.
"""

import asyncio
import threading
import time
import uuid

from ember.engine.sampling import SamplingParams
from ember.engine.scheduler import Delta
from ember.errors import InvalidRequest, Overloaded
from ember.server.errors import NotReady, RequestTimeout
from ember.server.pool import ServedModel


class Run:
    def __init__(self, served: ServedModel, prompts: list[list[int]], params: SamplingParams, metrics, record: dict,
                 request_id: str | None = None):
        self.served, self.prompts, self.params, self.metrics, self.record = served, prompts, params, metrics, record
        self.request_id = request_id or uuid.uuid4().hex
        # Pinned: a hot swap (server/follow.py) or an unload changes served.engine; this run stays on the version
        # it began on, and that engine is not freed before the run ends (model_set.engine_idle counts pins).
        self.engine, self.version = served.engine, served.ref
        if self.engine is None:
            raise NotReady(f"the model {served.id!r} was just unloaded; retry")
        self.engine.pins = getattr(self.engine, "pins", 0) + 1  # runs live on the event loop: no lock needed
        record["version"] = self.version  # the x-ember-model-version header and the log line say who answered
        # Every sequence the engine runs counts: n choices, or every beam of a beam search.
        self.units = len(prompts) * (params.num_beams if params.use_beam_search else params.n)
        self.tenant = None  # the API key id: admission is fair across keys
        self.queue_timeout: float | None = None
        self.deadline: float | None = None  # perf_counter time past which the request is ended (504)
        self.ticket = None  # server.limits.Ticket: the key's token counters
        self.t_arrival = time.perf_counter()
        self.t_admitted = self.t_first = self.t_last = None
        self.prompt_tokens = self.completion_tokens = self.streamed_tokens = self.cached_tokens = 0
        self.finish_reasons: list[str] = []
        self._pending: set[str] = set()
        self._admitted = False
        self.aborted = False
        self._closed = False
        self._q: asyncio.Queue | None = None
        self._cancel = threading.Event()  # stops this run's beam searches

    async def admit(self) -> None:
        """Waits for room (or raises Overloaded at once when the queue is full)."""
        try:
            await asyncio.wait_for(self.served.admission.acquire(self.units, self.tenant), self.queue_timeout)
        except asyncio.TimeoutError:
            self.metrics.rejected.labels(self.served.id).inc()
            raise Overloaded(f"waited {self.queue_timeout:g}s in the queue without a free slot (--queue-timeout); "
                             "retry later", retry_after=self.served.admission.retry_after()) from None
        except Overloaded:
            self.metrics.rejected.labels(self.served.id).inc()
            raise
        self._admitted = True
        self.t_admitted = time.perf_counter()
        self.metrics.queue_time.labels(self.served.id).observe(self.t_admitted - self.t_arrival)

    def start(self) -> None:
        """Queues the engine requests (idempotent); raises at once for a request the engine refuses."""
        if self._q is not None:
            return
        loop = asyncio.get_running_loop()
        q = self._q = asyncio.Queue()
        engine = self.engine
        if self.params.use_beam_search and getattr(self.served, "adapter", None):
            raise InvalidRequest("beam search is not available for LoRA adapters served unmerged; merge the "
                                 "adapter (`ember models merge`) and serve the merged model", param="use_beam_search")
        for pi, ids in enumerate(self.prompts):
            rid = f"{self.request_id}-{pi}"
            if self.params.use_beam_search:
                self._pending.add(rid)
                fut = loop.run_in_executor(None, engine.beam_search, ids, self.params, self._cancel.is_set)
                fut.add_done_callback(lambda f, pi=pi, rid=rid: q.put_nowait(("beam", pi, rid, f)))
                continue

            def cb(d, pi=pi):
                loop.call_soon_threadsafe(q.put_nowait, ("delta", pi, None, d))

            try:
                engine.add_request(ids, self.params, cb, request_id=rid,
                                   adapter=getattr(self.served, "adapter", None))
            except BaseException:
                self._abort_pending()
                raise
            self._pending.add(rid)

    async def events(self):
        """Yields (prompt_index, Delta) until every choice of every prompt finished."""
        self.start()
        q = self._q
        try:
            while self._pending:
                if self.deadline is None:
                    kind, pi, rid, item = await q.get()
                else:
                    try:
                        left = max(0.0, self.deadline - time.perf_counter())
                        kind, pi, rid, item = await asyncio.wait_for(q.get(), left)
                    except asyncio.TimeoutError:
                        raise RequestTimeout("the request ran longer than the server's --request-timeout",
                                             code="request_timeout") from None
                if kind == "beam":
                    self._pending.discard(rid)
                    comp = item.result()  # re-raises an error of the beam search itself
                    for c in comp.choices if comp is not None else []:
                        last = c.index == len(comp.choices) - 1
                        d = Delta(comp.request_id, c.index, c.text, c.token_ids, c.logprobs, c.finish_reason,
                                  comp.usage if last else None)
                        self._observe(d)
                        yield pi, d
                    continue
                d: Delta = item
                self._observe(d)
                if d.usage is not None:
                    self._pending.discard(f"{self.request_id}-{pi}")
                yield pi, d
        finally:
            self._abort_pending()

    def _observe(self, d: Delta) -> None:
        now = time.perf_counter()
        if d.token_ids:
            self.streamed_tokens += len(d.token_ids)
            if self.ticket is not None:
                self.ticket.tokens(len(d.token_ids))
            if self.t_first is None:
                self.t_first = now
                self.metrics.ttft.labels(self.served.id).observe(now - self.t_arrival)
            self.t_last = now
        if d.finish_reason:
            self.finish_reasons.append(d.finish_reason)
        if d.usage is not None:
            self.prompt_tokens += d.usage.prompt_tokens
            self.completion_tokens += d.usage.completion_tokens
            self.cached_tokens += d.usage.cached_tokens

    def _abort_pending(self) -> None:
        if self._pending:
            self.aborted = True
            self._cancel.set()
            for rid in list(self._pending):
                self.engine.abort(rid)  # a no-op for a beam search, which the cancel flag stops
            self._pending.clear()

    def close(self, status: int = 200) -> None:
        """Releases the admission slot and records metrics + log fields; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._abort_pending()
        self.engine.pins -= 1
        if self._admitted:
            self.served.admission.release(self.units)
        m, name = self.metrics, self.served.id
        end = time.perf_counter()
        if status >= 400:
            pass
        elif self.aborted:
            m.aborted.labels(name).inc()
        else:
            for reason in self.finish_reasons:
                m.success.labels(name, reason).inc()
            m.e2e.labels(name).observe(end - self.t_arrival)
            seqs = max(1, len(self.finish_reasons))
            per_seq = self.completion_tokens / seqs
            if self.t_first is not None and per_seq > 1:
                m.tpot.labels(name).observe((self.t_last - self.t_first) / (per_seq - 1))
        if self.aborted:  # no usage arrived: count what was generated before the abort
            self.completion_tokens = max(self.completion_tokens, self.streamed_tokens)
            self.prompt_tokens = self.prompt_tokens or sum(len(p) for p in self.prompts)
        if self.ticket is not None:
            self.ticket.close(self.prompt_tokens, self.completion_tokens)
        m.prompt_tokens.labels(name).inc(self.prompt_tokens)
        m.cached_tokens.labels(name).inc(self.cached_tokens)
        m.generation_tokens.labels(name).inc(self.completion_tokens)
        lifecycle = getattr(m, "lifecycle", None)
        if lifecycle is not None:
            lifecycle.served(name, self.version, self.completion_tokens)
        self.record.update({
            "model": name, "version": self.version,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "finish_reasons": sorted(set(self.finish_reasons)), "aborted": self.aborted,
            "queue_s": None if self.t_admitted is None else round(self.t_admitted - self.t_arrival, 4),
            "ttft_s": None if self.t_first is None else round(self.t_first - self.t_arrival, 4),
            "e2e_s": round(end - self.t_arrival, 4)})
