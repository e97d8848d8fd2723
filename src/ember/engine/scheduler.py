"""Request and sequence state, admission and batch composition for the engine's step loop.

    engine = Engine.load("smollm2-135m-instruct", max_slots=32, step_tokens=256)   # Scheduler(32, ...)

Every step runs all decoding sequences (one token each) plus as much prefill as the step's token budget
leaves, in first-come order. Long prompts are prefilled in chunks across steps, so a long prompt delays
running streams by at most one budget's worth of tokens per step. Each sequence owns one preallocated
cache slot of max_seq_len positions for its whole life; a request is admitted only when a slot is free,
so a full cache makes new requests wait, and nothing is ever truncated or preempted.

Prefix reuse: a freed slot keeps its keys and values until a new owner overwrites them, and the
scheduler remembers which tokens they belong to. A new prompt takes the free slot that already holds its
longest prefix (at least MIN_REUSE tokens) and computes only the rest: the next turn of a chat, or
another request with the same system prompt, skips the part already computed (reported as
`cached_tokens`, like OpenAI's `prompt_tokens_details.cached_tokens`).
"""

import heapq
import itertools
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from ember.engine.detok import Detokenizer
from ember.engine.sampling import SamplingParams


# Fewer shared tokens than this are not worth breaking the lowest-free-slot order for.
MIN_REUSE = 16


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
    matcher: object = None  # llguidance matcher of a constrained sequence (engine/structured.py)

    @property
    def prefilled(self) -> bool:
        return self.n_cached >= len(self.prompt_ids)


@dataclass
class Request:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    on_delta: object  # callable(Delta), called from the engine thread
    seqs: list[Sequence] = field(default_factory=list)
    arrival: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.seqs)

    def usage(self) -> Usage:
        return Usage(len(self.prompt_ids), sum(len(s.output_ids) for s in self.seqs), self.seqs[0].cached_tokens)


class Scheduler:
    def __init__(self, max_slots: int, step_tokens: int):
        self.max_slots, self.step_tokens = max_slots, step_tokens
        self.free = list(range(max_slots))  # a heap: the lowest free slot first keeps the decode range dense
        self.held: list[list[int]] = [[] for _ in range(max_slots)]  # tokens whose K/V a free slot still holds
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._ids = itertools.count()

    def add(self, seqs: list[Sequence]) -> None:
        self.waiting.extend(seqs)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> tuple[list[Sequence], list[tuple[Sequence, int]], list[tuple[int, int, int]]]:
        """-> (decode sequences, [(prefill sequence, chunk length)], [(from slot, to slot, positions)]) for
        the next step; the cache copies must happen before the step's forward."""
        decode = [s for s in self.running if s.prefilled]
        budget = max(self.step_tokens - len(decode), 1)
        prefill, copies = [], []
        for s in self.running:
            if not s.prefilled and budget > 0:
                n = self._prefill_len(s, budget, copies)
                if n:
                    prefill.append((s, n))
                    budget -= n
        while self.waiting and self.free and budget > 0:
            s = self.waiting.popleft()
            s.slot = self._take_slot(s)
            self.running.append(s)
            n = self._prefill_len(s, budget, copies)
            if n:
                prefill.append((s, n))
                budget -= n
        return decode, prefill, copies

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
        return min(len(s.prompt_ids) - s.n_cached, budget)

    def _take_slot(self, s: Sequence) -> int:
        """The free slot already holding the longest prefix of s's prompt, else the lowest free slot."""
        best, best_n = -1, MIN_REUSE - 1
        prompt = s.prompt_ids
        for slot in self.free:
            held = self.held[slot]
            if len(held) <= best_n or held[0] != prompt[0]:
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
        if seq.slot >= 0:
            # Positions [0, n_cached) hold the K/V of these tokens (the last sampled token was never fed).
            self.held[seq.slot] = (seq.prompt_ids + seq.output_ids)[: seq.n_cached]
            heapq.heappush(self.free, seq.slot)
            seq.slot = -1
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    @property
    def used_slots(self) -> int:
        return self.max_slots - len(self.free)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
