"""Request and sequence state, admission and batch composition for the engine's step loop.

    engine = Engine.load("smollm2-135m-instruct", max_slots=32, step_tokens=256)   # Scheduler(32, ...)

Every step runs all decoding sequences (one token each) plus as much prefill as the step's token budget
leaves, in first-come order. Long prompts are prefilled in chunks across steps, so a long prompt delays
running streams by at most one budget's worth of tokens per step. Each sequence owns one preallocated
cache slot of max_seq_len positions for its whole life; a request is admitted only when a slot is free,
so a full cache makes new requests wait, and nothing is ever truncated or preempted.

Each step is vLLM's three phases (`Engine._step`): `schedule()` returns a `SchedulerOutput` (which sequences
decode, which prefill how many prompt tokens, which cache copies come first), the model executes it on the
compute thread, and `update()` advances every scheduled sequence's cache position and state. A sequence's
state is named (`SeqState`): waiting -> prefilling -> decoding -> finished; a scoring sequence
(max_tokens 0) goes from prefilling straight to finished.

Prefix reuse: a freed slot keeps its keys and values until a new owner overwrites them, and the
scheduler remembers which tokens they belong to. A new prompt takes the free slot that already holds its
longest prefix (at least MIN_REUSE tokens) and computes only the rest (only between requests with
the same `SamplingParams.cache_salt` and LoRA adapter: the server gives each API key its own salt, and an
adapter's keys and values differ from its base's): the next turn of a chat, or
another request with the same system prompt, skips the part already computed (reported as
`cached_tokens`, like OpenAI's `prompt_tokens_details.cached_tokens`). A sequence that wants its prompt's
logprobs takes no held prefix: every position's logits must be computed.
"""

import heapq
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

import torch

from ember.engine.detok import Detokenizer
from ember.engine.sampling import SamplingParams

# Fewer shared tokens than this are not worth breaking the lowest-free-slot order for.
MIN_REUSE = 16


class SeqState(str, Enum):
    WAITING = "waiting"  # queued, no cache slot yet
    PREFILLING = "prefilling"  # holds a slot; prompt tokens still to compute
    DECODING = "decoding"  # prompt computed; one new token per step
    FINISHED = "finished"  # stopped, hit a limit, or aborted; its slot is free


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens whose keys and values were reused, not computed

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Delta:
    """One increment of a stream. The last delta of a choice carries finish_reason; the last delta of
    the request (after every choice finished) also carries usage."""

    request_id: str
    index: int  # choice index (0..n-1)
    text: str
    token_ids: list[int]
    logprobs: list[dict] | None = None  # per new token: {"token_id", "logprob", "top": [(id, lp), ...]}
    finish_reason: str | None = None  # "stop", "length" or "abort"
    usage: Usage | None = None
    # On the first delta of choice 0 when params.prompt_logprobs is set: one entry per prompt token, the
    # first None (nothing predicts it), the others shaped like `logprobs` entries.
    prompt_logprobs: list[dict | None] | None = None


@dataclass
class Choice:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    logprobs: list[dict] | None = None


@dataclass
class Completion:
    request_id: str
    prompt_token_ids: list[int]
    choices: list[Choice]
    usage: Usage
    prompt_logprobs: list[dict | None] | None = None

    @property
    def text(self) -> str:
        return self.choices[0].text


@dataclass
class Sequence:
    request: "Request"
    index: int
    prompt_ids: list[int]
    params: SamplingParams
    generator: torch.Generator | None
    detok: Detokenizer
    max_tokens: int
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[dict] | None = None
    slot: int = -1
    n_cached: int = 0  # positions of this sequence already in its cache slot
    finish_reason: str | None = None
    parent: "Sequence | None" = None  # choice 0 of the same request (n > 1): its prompt cache is copied, not recomputed
    cached_tokens: int = 0  # prompt positions found already in the slot it was given (prefix reuse)
    state: SeqState = SeqState.WAITING
    # [None, lp(token 1), ...] as the prompt's chunks are computed (params.prompt_logprobs set); else None.
    prompt_logprobs: list[dict | None] | None = None
    prompt_logprobs_sent: bool = False
    matcher: object = None  # llguidance matcher of a constrained sequence (engine/structured.py)

    @property
    def prefill_len(self) -> int:
        """Prompt positions to compute. Scoring only (max_tokens 0, prompt logprobs wanted), the last token
        predicts nothing, so its keys, values and logits are never needed."""
        n = len(self.prompt_ids)
        return n - 1 if self.max_tokens == 0 and self.prompt_logprobs is not None and n > 1 else n


@dataclass
class Request:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    on_delta: object  # callable(Delta), called from the engine thread
    seqs: list[Sequence] = field(default_factory=list)
    arrival: float = field(default_factory=time.monotonic)
    adapter: int = -1  # LoRA adapter slot of the base engine (engine/model_set.AdapterCache), -1: none
    adapter_ref: str | None = None  # that adapter's reference: part of the prefix-reuse key (slots get reused)

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.seqs)

    def usage(self) -> Usage:
        return Usage(len(self.prompt_ids), sum(len(s.output_ids) for s in self.seqs), self.seqs[0].cached_tokens)


@dataclass
class SchedulerOutput:
    """What one step computes (vLLM's SchedulerOutput). `last_chunk[i]` tells whether prefill[i] finishes
    its sequence's prompt, so that the step's logits at its last position give the first output token."""

    decode: list[Sequence]
    prefill: list[tuple[Sequence, int]]  # (sequence, prompt tokens computed this step from s.n_cached on)
    copies: list[tuple[int, int, int]]  # (from slot, to slot, positions), done before the forward
    last_chunk: list[bool] = field(default_factory=list)
    # Speculative rows (engine/speculative.py): (sequence, draft tokens); they feed their last token and the
    # drafts as one chunk, and are not in `decode`.
    spec: list[tuple[Sequence, list[int]]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.decode and not self.prefill and not self.spec


class Scheduler:
    def __init__(self, max_slots: int, step_tokens: int, drafter=None):
        self.max_slots, self.step_tokens = max_slots, step_tokens
        self.drafter = drafter  # engine/speculative.py's NgramDrafter, or None
        self.free = list(range(max_slots))  # a heap: the lowest free slot first keeps the decode range dense
        self.held: list[list[int]] = [[] for _ in range(max_slots)]  # tokens whose K/V a free slot still holds
        self.held_salt: list[tuple | None] = [None] * max_slots  # whose they are: (salt, adapter), reused if equal
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._ids = itertools.count()

    def add(self, seqs: list[Sequence]) -> None:
        for s in seqs:
            s.state = SeqState.WAITING
        self.waiting.extend(seqs)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        """The next step: every decoding sequence, then prefill chunks in arrival order within the budget."""
        decode = [s for s in self.running if s.state is SeqState.DECODING]
        spec = []
        if self.drafter is not None and len(decode) <= self.drafter.cfg.max_batch:
            drafts = [self.drafter.propose(s) for s in decode]
            spec = [(s, d) for s, d in zip(decode, drafts) if d]
            decode = [s for s, d in zip(decode, drafts) if not d]
        budget = max(self.step_tokens - len(decode) - sum(len(d) + 1 for _, d in spec), 1)
        prefill, copies = [], []
        for s in self.running:
            if s.state is SeqState.PREFILLING and budget > 0:
                n = self._prefill_len(s, budget, copies)
                if n:
                    prefill.append((s, n))
                    budget -= n
        while self.waiting and self.free and budget > 0:
            s = self.waiting.popleft()
            s.slot = self._take_slot(s)
            s.state = SeqState.PREFILLING
            self.running.append(s)
            n = self._prefill_len(s, budget, copies)
            if n:
                prefill.append((s, n))
                budget -= n
        return SchedulerOutput(decode, prefill, copies, [s.n_cached + n == s.prefill_len for s, n in prefill], spec)

    def update(self, out: SchedulerOutput, accepted: list[int] | None = None) -> None:
        """After the step's forward: the computed positions are in the cache; a finished prompt decodes next.
        accepted[i]: drafts of out.spec[i] accepted; the rest of its chunk lies past its new length."""
        for s in out.decode:
            s.n_cached += 1
        for (s, _), m in zip(out.spec, accepted or []):
            s.n_cached += m + 1
        for (s, n), last in zip(out.prefill, out.last_chunk):
            s.n_cached += n
            if last:
                s.state = SeqState.DECODING

    @staticmethod
    def _prefill_len(s: Sequence, budget: int, copies: list) -> int:
        """Prompt tokens s computes this step. Choices 1..n-1 of a request share choice 0's prompt: they wait
        while it prefills, then copy all but the last prompt position from its slot and compute only the last
        token (for their own first logits). If choice 0 is gone before that, they prefill on their own."""
        p = s.parent
        if p is not None:
            shared = len(s.prompt_ids) - 1
            if p.slot >= 0 and p.n_cached < shared:
                return 0
            if p.slot >= 0 and shared > 0:
                copies.append((p.slot, s.slot, shared))
                s.n_cached = shared
            s.parent = None
        return min(s.prefill_len - s.n_cached, budget)

    def _take_slot(self, s: Sequence) -> int:
        """The free slot already holding the longest prefix of s's prompt, else the lowest free slot."""
        best, best_n = -1, MIN_REUSE - 1
        prompt = s.prompt_ids
        for slot in self.free if s.prompt_logprobs is None else ():
            held = self.held[slot]
            if len(held) <= best_n or held[0] != prompt[0] or self.held_salt[slot] != _reuse_key(s):
                continue
            n = _common_prefix(held, prompt)
            if n > best_n or (n == best_n and slot < best):
                best, best_n = slot, n
        if best < 0:
            best = heapq.heappop(self.free)
        else:
            self.free.remove(best)
            heapq.heapify(self.free)
            # At least the last prompt token is computed: its logits give the first output token.
            s.n_cached = s.cached_tokens = min(best_n, len(prompt) - 1)
        self.held[best] = []  # the new owner overwrites it from n_cached on
        return best

    def release(self, seq: Sequence) -> None:
        """Frees the slot of a finished or aborted sequence; a waiting one can take it in the next step."""
        seq.state = SeqState.FINISHED
        if seq.slot >= 0:
            # Positions [0, n_cached) hold the K/V of these tokens (the last sampled token was never fed).
            self.held[seq.slot] = (seq.prompt_ids + seq.output_ids)[: seq.n_cached]
            self.held_salt[seq.slot] = _reuse_key(seq)
            heapq.heappush(self.free, seq.slot)
            seq.slot = -1
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    @property
    def used_slots(self) -> int:
        return self.max_slots - len(self.free)


def _reuse_key(s: Sequence) -> tuple:
    """Keys and values are shared only between sequences with the same salt and the same LoRA adapter."""
    return s.params.cache_salt, s.request.adapter_ref


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class Collector:
    """Accumulates one request's deltas into a Completion for the synchronous front door."""

    def __init__(self, prompt_ids: list[int]):
        self.prompt_ids = prompt_ids
        self.choices: dict[int, Choice] = {}
        self.prompt_logprobs = None

    def add(self, d: Delta) -> None:
        c = self.choices.setdefault(d.index, Choice(d.index, "", [], None, None))
        c.text += d.text
        c.token_ids += d.token_ids
        if d.logprobs is not None:
            c.logprobs = (c.logprobs or []) + d.logprobs
        if d.finish_reason:
            c.finish_reason = d.finish_reason
        if d.prompt_logprobs is not None:
            self.prompt_logprobs = d.prompt_logprobs

    def completion(self, last: Delta) -> Completion:
        return Completion(last.request_id, self.prompt_ids, [self.choices[i] for i in sorted(self.choices)],
                          last.usage, self.prompt_logprobs)
