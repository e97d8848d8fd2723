"""SamplingParams and batched logits processing: penalties, logit bias, temperature, top-k/p, min-p, seeds.

    engine.generate(["Once upon a time"], SamplingParams(temperature=0.8, top_p=0.9, seed=7, max_tokens=64))

Field names follow vLLM. All rows of a step are processed together; the only per-row loop is the draw of
each sampled row's noise from its own generator, which is what makes "same seed, same output" independent
of whatever else is in the batch. Sampling uses the exponential race (argmax of p / Exp(1) noise), which
draws exactly from p and needs one vector of noise per row.
"""

from dataclasses import dataclass, field

import torch

from ember.engine.structured import Constraint
from ember.errors import InvalidRequest


@dataclass
class SamplingParams:
    max_tokens: int | None = 16  # None: up to the context length; 0: score the prompt, generate nothing
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # transformers/vLLM semantics, over prompt and output tokens
    presence_penalty: float = 0.0  # OpenAI semantics, over output tokens
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    n: int = 1
    # logprobs: None (off) or k >= 0: the sampled token's logprob plus the k most likely alternatives,
    # computed from the model's distribution before any processing (as vLLM's default does).
    logprobs: int | None = None
    # prompt_logprobs: None (off) or k >= 0: each prompt token's logprob (the first has none) plus the k
    # most likely alternatives at its position (vLLM's prompt_logprobs; what `echo` + `logprobs` return).
    prompt_logprobs: int | None = None
    use_beam_search: bool = False
    num_beams: int = 1  # > 1 implies beam search
    length_penalty: float = 1.0
    early_stopping: bool | str = False  # True, False or "never", as in transformers
    skip_special_tokens: bool = True
    # Prefix-cache reuse only between requests with equal salts (the server sets key id + cache_salt).
    cache_salt: str | None = None
    # Constrained decoding (engine/structured.py): JSON schema, JSON object, regex, choice or grammar.
    constraint: "Constraint | None" = None

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in (self.stop or []) if s]
        self.logit_bias = {int(k): float(v) for k, v in (self.logit_bias or {}).items()}
        if self.top_k is None or self.top_k < 0:
            self.top_k = 0
        if self.num_beams > 1:
            self.use_beam_search = True
        elif self.use_beam_search:
            self.num_beams = 4
        self.validate()

    def validate(self) -> None:
        def bad(name, why):
            raise InvalidRequest(f"{name} {why}", param=name)

        if self.max_tokens is not None and self.max_tokens < 0:
            bad("max_tokens", "must be at least 0")
        if self.temperature < 0:
            bad("temperature", "must be >= 0")
        if not 0 < self.top_p <= 1:
            bad("top_p", "must be in (0, 1]")
        if not 0 <= self.min_p <= 1:
            bad("min_p", "must be in [0, 1]")
        if self.repetition_penalty <= 0:
            bad("repetition_penalty", "must be > 0")
        if not -2 <= self.presence_penalty <= 2:
            bad("presence_penalty", "must be in [-2, 2]")
        if not -2 <= self.frequency_penalty <= 2:
            bad("frequency_penalty", "must be in [-2, 2]")
        if self.n < 1:
            bad("n", "must be at least 1")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            bad("logprobs", "must be in [0, 20]")
        if self.prompt_logprobs is not None and not 0 <= self.prompt_logprobs <= 20:
            bad("prompt_logprobs", "must be in [0, 20]")
        if self.use_beam_search and self.n > self.num_beams:
            bad("n", "must not exceed num_beams")
        if self.use_beam_search and self.prompt_logprobs is not None:
            bad("prompt_logprobs", "is not supported with beam search")
        if self.use_beam_search and self.max_tokens == 0:
            bad("max_tokens", "must be at least 1 with beam search")
        if self.use_beam_search and self.constraint is not None:
            raise InvalidRequest("beam search cannot be combined with structured output (response_format, "
                                 "guided_*, tools)", param="use_beam_search")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def needs_penalties(self) -> bool:
        return self.repetition_penalty != 1 or self.presence_penalty != 0 or self.frequency_penalty != 0


def seeded_generator(seed: int | None, index: int = 0) -> torch.Generator:
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        # Choice i of a request with n > 1 gets its own stream, still fully determined by the seed.
        g.manual_seed((seed * 1000003 + index) % 2**64)  # any int64 seed stays in range
    return g


def apply_penalties(logits: torch.Tensor, rows: list[int], params: list[SamplingParams],
                    prompt_ids: list[list[int]], output_ids: list[list[int]]) -> None:
    """In place, for the listed rows only (rows without penalties cost nothing)."""
    V = logits.shape[1]
    for r in rows:
        p, lg = params[r], logits[r]
        if p.repetition_penalty != 1:
            seen = torch.tensor(sorted(set(prompt_ids[r]) | set(output_ids[r])), dtype=torch.long)
            if len(seen):
                s = lg[seen]
                lg[seen] = torch.where(s > 0, s / p.repetition_penalty, s * p.repetition_penalty)
        if (p.presence_penalty or p.frequency_penalty) and output_ids[r]:
            counts = torch.bincount(torch.tensor(output_ids[r]), minlength=V)[:V].to(lg.dtype)
            lg -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(lg.dtype)


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None],
           prompt_ids: list[list[int]], output_ids: list[list[int]]) -> torch.Tensor:
    """logits [R, V] (float32, modified in place) -> next token ids [R]."""
    R, V = logits.shape
    pen_rows = [i for i, p in enumerate(params) if p.needs_penalties]
    if pen_rows:
        apply_penalties(logits, pen_rows, params, prompt_ids, output_ids)
    for i, p in enumerate(params):
        if p.logit_bias:
            ids = torch.tensor(list(p.logit_bias), dtype=torch.long)
            if int(ids.max()) >= V or int(ids.min()) < 0:
                continue  # validated at admission; a stale id must not crash the batch
            logits[i, ids] += torch.tensor(list(p.logit_bias.values()), dtype=logits.dtype)
    out = logits.argmax(dim=-1)
    sampled = [i for i, p in enumerate(params) if not p.greedy]
    if not sampled:
        return out
    idx = torch.tensor(sampled, dtype=torch.long)
    lg = logits[idx] / torch.tensor([params[i].temperature for i in sampled])[:, None]
    ps = [params[i] for i in sampled]
    if any(p.top_k for p in ps) or any(p.top_p < 1 for p in ps):
        srt, order = lg.sort(dim=-1, descending=True)
        ks = torch.tensor([p.top_k if 0 < p.top_k < V else V for p in ps])
        drop = torch.arange(V)[None, :] >= ks[:, None]
        probs = torch.softmax(srt, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (the token crossing the threshold stays).
        cum = probs.cumsum(-1) - probs
        drop |= cum >= torch.tensor([p.top_p for p in ps])[:, None]
        drop[:, 0] = False
        srt.masked_fill_(drop, float("-inf"))
        lg = torch.full_like(lg, float("-inf")).scatter_(1, order, srt)
    probs = torch.softmax(lg, dim=-1)
    if any(p.min_p > 0 for p in ps):
        mins = torch.tensor([p.min_p for p in ps])[:, None] * probs.max(dim=-1, keepdim=True).values
        probs = probs.masked_fill(probs < mins, 0.0)
    noise = torch.stack([torch.empty(V).exponential_(generator=generators[i]) for i in sampled])
    out[idx] = (probs / noise).argmax(dim=-1)
    return out


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, k: int, rank: bool = False) -> list[dict]:
    """Per row: {"token_id", "logprob", "top": [(id, logprob), ...]} from the unprocessed logits; with rank,
    also the token's 1-based rank in the distribution (vLLM's prompt_logprobs carry it)."""
    lp = torch.log_softmax(logits, dim=-1)
    chosen_t = lp.gather(1, tokens[:, None])
    chosen = chosen_t[:, 0].tolist()
    ranks = ((lp > chosen_t).sum(dim=-1) + 1).tolist() if rank else None
    tops = lp.topk(k, dim=-1) if k > 0 else None
    res = []
    for r in range(logits.shape[0]):
        top = list(zip(tops.indices[r].tolist(), tops.values[r].tolist())) if tops is not None else []
        res.append({"token_id": int(tokens[r]), "logprob": chosen[r], "top": top})
        if ranks is not None:
            res[-1]["rank"] = ranks[r]
    return res
