"""Speculative decoding: prompt-lookup (n-gram) drafts, verified in one forward of k+1 positions per row.

    ember serve --speculative ngram --num-speculative-tokens 4
    engine = Engine.load("smollm2-135m-instruct", speculative=SpecConfig("ngram", num_tokens=4))

Drafting (vLLM's `ngram`, llama.cpp's lookup decoding): the last n tokens of a sequence (n from `ngram_max`
down to `ngram_min`) are looked up earlier in its prompt + output; the k tokens that followed the most recent
match are the draft. Summaries, code edits and quoting answers copy spans of their prompt, so the drafts of
those are often right; free chat finds few matches and then simply decodes one token as before.

Verification: the row's last token and its k drafts go through the model as one chunk of k+1 positions at
the row's cache position (the same path as a chunked prefill), giving the target's logits after each prefix.
Position i is sampled exactly as plain decoding would sample it (same processing, the row's own generator,
one noise vector per position in order); drafts are accepted while they equal the sampled token, and the
first mismatch (or the bonus position after k accepted drafts) yields the sampled token itself. With a
deterministic drafter (q = one-hot on draft t) this is Leviathan et al.'s rejection sampling: t is accepted
with probability p(t), and on rejection the token is distributed as p with t removed, renormalised. Because
each emitted token uses the same noise plain decoding would have used for it (the generator is rewound past
the unused positions' noise), a seeded request gives the same text with speculation on or off, alone or
batched. Rejected positions need no cache rollback: their keys and values lie beyond the row's new length,
are masked out, and are overwritten by the next step.

Rows fall back to plain decoding (no draft) when they use penalties (which depend on the tokens before each
position), logprobs, a structured-output constraint, or when the batch holds more than `max_batch` decoding
rows (verification then costs more compute than the saved steps are worth).
"""

from dataclasses import dataclass

import numpy as np
import torch

from ember.engine.sampling import SamplingParams, sample
from ember.errors import InvalidRequest

METHODS = ("ngram",)


@dataclass
class SpecConfig:
    method: str = "ngram"
    num_tokens: int = 4  # k: draft tokens verified per step and row
    ngram_max: int = 4
    ngram_min: int = 1
    max_batch: int = 8  # decoding rows above which no row speculates (vLLM's disable_by_batch_size)

    def __post_init__(self):
        if self.method not in METHODS:
            raise InvalidRequest(f"speculative method must be one of {', '.join(METHODS)}", param="speculative")
        if not 1 <= self.num_tokens <= 16:
            raise InvalidRequest("num_speculative_tokens must be in [1, 16]", param="num_speculative_tokens")
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise InvalidRequest("need 1 <= ngram_min <= ngram_max", param="ngram_min")


@dataclass
class SpecStats:
    """Counters in vLLM's spec_decode shape: drafts proposed, draft tokens, accepted draft tokens."""

    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0


def ngram_lookup(tokens: list[int], k: int, n_max: int, n_min: int) -> list[int]:
    """Up to k tokens that followed the most recent earlier occurrence of the longest suffix n-gram
    (n_max down to n_min) of `tokens`; [] when none occurs. Vectorised: one pass per n over the matches
    of the last token only."""
    L = len(tokens)
    if L < 2 or k < 1:
        return []
    a = np.asarray(tokens, dtype=np.int64)
    cand = np.flatnonzero(a[:-1] == a[-1])  # end positions i < L-1 of a match of the last token
    if cand.size == 0:
        return []
    for n in range(min(n_max, L - 1), n_min - 1, -1):
        c = cand[cand >= n - 1]
        for j in range(1, n):
            if c.size == 0:
                break
            c = c[a[c - j] == a[L - 1 - j]]
        if c.size:
            i = int(c[-1])  # the most recent match: its continuation is the likeliest to repeat
            return a[i + 1 : i + 1 + k].tolist()
    return []


class NgramDrafter:
    """Proposes each decoding row's draft for one step (called by the scheduler)."""

    def __init__(self, cfg: SpecConfig, context_length: int):
        self.cfg, self.context_length = cfg, context_length

    def eligible(self, s) -> bool:
        p: SamplingParams = s.params
        return s.logprobs is None and s.matcher is None and not p.needs_penalties

    def propose(self, s) -> list[int]:
        if not self.eligible(s):
            return []
        # Room: the drafts plus the bonus token stay within max_tokens and the slot's positions.
        room = min(s.max_tokens - len(s.output_ids) - 1, self.context_length - 2 - s.n_cached - 1)
        k = min(self.cfg.num_tokens, room)
        if k < 1:
            return []
        return ngram_lookup(s.prompt_ids + s.output_ids, k, self.cfg.ngram_max, self.cfg.ngram_min)


def verify(logits: torch.Tensor, rows: list, drafts: list[list[int]]) -> list[list[int]]:
    """logits [sum(len(d) + 1), V]: the target's logits after each prefix, row after row. Returns each row's
    emitted tokens: its accepted drafts then one sampled token (1 to k+1 tokens). Advances each sampled
    row's generator by exactly one noise vector per emitted token."""
    params, gens, prompts, outs, saved = [], [], [], [], []
    for s, d in zip(rows, drafts):
        params += [s.params] * (len(d) + 1)
        gens += [s.generator] * (len(d) + 1)
        prompts += [s.prompt_ids] * (len(d) + 1)
        outs += [s.output_ids] * (len(d) + 1)
        saved.append(s.generator.get_state() if s.generator is not None else None)
    toks = sample(logits, params, gens, prompts, outs).tolist()
    emitted, off = [], 0
    V = logits.shape[1]
    for s, d, state in zip(rows, drafts, saved):
        t = toks[off : off + len(d) + 1]
        m = 0
        while m < len(d) and t[m] == d[m]:
            m += 1
        emitted.append(t[: m + 1])
        if state is not None and m + 1 < len(t):
            # Rewind: the noise of positions past the first mismatch belongs to later steps' tokens.
            s.generator.set_state(state)
            for _ in range(m + 1):
                torch.empty(V).exponential_(generator=s.generator)
        off += len(d) + 1
    return emitted
