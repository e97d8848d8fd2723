"""One engine step's execution: the forward over a SchedulerOutput's tokens, then sampling and logprobs.

    result = compute.run(self._execute, out)   # Engine._step: model_runner.execute(model, cache, out, ...)

vLLM's model runner: it reads the scheduled sequences and the KV cache and returns a StepResult; it never
touches scheduler state (the engine thread's update does). Runs on the process's compute thread.
"""

from dataclasses import dataclass, field

import torch

from ember.engine.sampling import sample, token_logprobs
from ember.engine.scheduler import SchedulerOutput, Sequence
from ember.engine.speculative import verify as spec_verify
from ember.models.attention import make_batch


@dataclass
class StepResult:
    """What the compute thread hands back from one step (vLLM's ModelRunnerOutput)."""

    sampled: list[tuple[Sequence, int, dict | None]] = field(default_factory=list)  # (seq, token, logprob)
    prompt_logprobs: list[tuple[Sequence, list[dict]]] = field(default_factory=list)  # this step's chunk of each
    spec: list[tuple[Sequence, list[int]]] = field(default_factory=list)  # (seq, accepted drafts + 1 token)


def execute(model, cache, out: SchedulerOutput, constraints, lora: bool) -> StepResult:
    """One forward over the step's tokens, then sampling of every row that needs a next token and the
    logprobs asked for. Touches no scheduler state: it reads the sequences, the update writes them."""
    for src, dst, n in out.copies:
        cache.copy_slot(src, dst, n)
    # Speculative rows go in as chunks (last token + drafts) ahead of the prompts' chunks.
    b = make_batch([(s.slot, s.n_cached, s.output_ids[-1]) for s in out.decode],
                   [(s.slot, s.n_cached, [s.output_ids[-1]] + d) for s, d in out.spec]
                   + [(s.slot, s.n_cached, s.prompt_ids[s.n_cached : s.n_cached + n]) for s, n in out.prefill],
                   [True] * len(out.spec) + out.last_chunk)
    # Logit rows: every decode token; every position of a speculative chunk; every position of a chunk
    # whose prompt is scored; else the last position of a prompt's last chunk. rows[i] is the sequence
    # sampled from logits row sample_at[i].
    index, rows, scoring = list(range(len(out.decode))), list(out.decode), []
    sample_at = list(range(len(out.decode)))
    off = len(out.decode)
    n_spec = sum(len(d) + 1 for _, d in out.spec)
    index.extend(range(off, off + n_spec))
    off += n_spec
    for (s, n), last in zip(out.prefill, out.last_chunk):
        if s.prompt_logprobs is not None:
            scoring.append((s, len(index), n))
            index.extend(range(off, off + n))
        elif last:
            index.append(off + n - 1)
        if last and s.max_tokens > 0:
            rows.append(s)
            sample_at.append(len(index) - 1)
        off += n
    if scoring or out.spec:
        b.logit_index = torch.tensor(index, dtype=torch.long)
    if lora:  # each token row's LoRA adapter slot (-1: the base alone)
        lora = ([s.request.adapter for s in out.decode]  # token rows in make_batch's order
                + [s.request.adapter for s, d in out.spec for _ in range(len(d) + 1)]
                + [s.request.adapter for s, n in out.prefill for _ in range(n)])
        b.lora_rows = torch.tensor(lora) if any(a >= 0 for a in lora) else None
    logits = model.forward(b, cache)
    res = StepResult()
    if out.spec:
        nd = len(out.decode)
        res.spec = list(zip([s for s, _ in out.spec],
                            spec_verify(logits[nd : nd + n_spec], [s for s, _ in out.spec],
                                               [d for _, d in out.spec])))
    for s, r0, n in scoring:
        targets = s.prompt_ids[s.n_cached + 1 : s.n_cached + n + 1]  # position p predicts token p + 1
        if targets:
            k = s.params.prompt_logprobs
            res.prompt_logprobs.append((s, token_logprobs(logits[r0 : r0 + len(targets)],
                                                          torch.tensor(targets), k, rank=True)))
    if not rows:
        return res
    if len(sample_at) != logits.shape[0]:
        logits = logits[sample_at]
    lp_rows = [i for i, s in enumerate(rows) if s.logprobs is not None]
    raw = logits[lp_rows].clone() if lp_rows else None
    params = [s.params for s in rows]
    con = [i for i, s in enumerate(rows) if s.matcher is not None]
    if con:  # rows without a constraint pay nothing
        constraints.apply_masks(logits, con, [rows[i].matcher for i in con])
    toks = sample(logits, params, [s.generator for s in rows], [s.prompt_ids for s in rows],
                  [s.output_ids for s in rows])
    lps = {}
    if lp_rows:
        k = max(rows[i].params.logprobs for i in lp_rows)
        for i, lp in zip(lp_rows, token_logprobs(raw, toks[lp_rows], k)):
            lp["top"] = lp["top"][: rows[i].params.logprobs]
            lps[i] = lp
    res.sampled = [(s, t, lps.get(i)) for i, (s, t) in enumerate(zip(rows, toks.tolist()))]
    return res

