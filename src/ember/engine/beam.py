"""Beam search, a port of transformers' `_beam_search` for one prompt, so outputs match generate(num_beams=k).

    ember generate smollm2-135m-instruct "The best way to learn" --beams 4 --max-tokens 32

The k beams live in k slots of a private KV cache; after each step the cache rows are reordered to follow
the surviving beams. Candidates are the top 2k continuations (so k live beams remain even when the best
ones end); finished hypotheses are scored sum(logprobs) / generated_length ** length_penalty, and
`early_stopping` (True / False / "never") has transformers' meaning. Sampling knobs do not apply to beams.
"""

import torch

from ember.engine import compute
from ember.engine.sampling import SamplingParams
from ember.models.attention import make_batch

NEG = -1.0e9


def _prefill(model, cache, ids: list[int], chunk: int = 512) -> torch.Tensor:
    logits = None
    for start in range(0, len(ids), chunk):
        piece = ids[start : start + chunk]
        last = start + len(piece) == len(ids)
        out = model.forward(make_batch([], [(0, start, piece)], [last]), cache)
        logits = out if last else logits
    return logits


def beam_search(model, prompt_ids: list[int], params: SamplingParams, max_new: int, eos_ids: list[int],
                cancelled=None) -> list[tuple[list[int], str]] | None:
    """-> up to num_beams (generated token ids, finish reason) pairs, best first; None if cancelled() turned
    true. Each step runs as its own task on the compute thread, so the continuous batch's steps go on
    in between, and cancelled() is checked before every step."""
    steps = _beam_steps(model, prompt_ids, params, max_new, eos_ids)
    while True:
        if cancelled is not None and cancelled():
            steps.close()
            return None
        done, result = compute.run(_resume, steps)
        if done:
            return result


@torch.inference_mode()
def _resume(steps):
    try:
        next(steps)
        return False, None
    except StopIteration as stop:
        return True, stop.value


def _beam_steps(model, prompt_ids: list[int], params: SamplingParams, max_new: int, eos_ids: list[int]):
    """A generator: one forward per next(); its return value is beam_search's result."""
    k, lp_pow, early = params.num_beams, params.length_penalty, params.early_stopping
    eos = set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos_ids))
    P = len(prompt_ids)
    max_length = P + max_new
    keep = max(2, 1 + len(eos)) * k
    top_mask = torch.zeros(keep, dtype=torch.bool)
    top_mask[:k] = True
    cache = model.make_cache(k, max_length + 1)
    logits = _prefill(model, cache, prompt_ids).float()
    yield
    for s in range(1, k):
        cache.copy_slot(0, s, P)
    logits = logits.expand(k, -1)
    running = [[] for _ in range(k)]
    run_scores = torch.zeros(k)
    run_scores[1:] = NEG
    fin_seqs = [[] for _ in range(k)]
    fin_scores = torch.full((k,), NEG)
    fin_done = torch.zeros(k, dtype=torch.bool)
    unsat = True
    cur = P
    while True:
        lp = torch.log_softmax(logits, dim=-1) + run_scores[:, None]
        V = lp.shape[1]
        top_lp, top_idx = torch.topk(lp.reshape(-1), keep)
        src, tok = (top_idx // V).tolist(), (top_idx % V).tolist()
        cands = [running[b] + [t] for b, t in zip(src, tok)]
        hits = torch.tensor([t in eos or cur + 1 >= max_length for t in tok])
        # Live beams for the next step: the best k candidates that did not just finish.
        run_lp = top_lp + hits.float() * NEG
        nxt = torch.topk(run_lp, k).indices.tolist()
        running, run_scores, beam_src = [cands[i] for i in nxt], run_lp[nxt], [src[i] for i in nxt]
        # Finished hypotheses: only candidates among the top k count, scored with the length penalty.
        f_lp = top_lp / ((cur + 1 - P) ** lp_pow)
        if bool(fin_done.all()) and early is True:
            f_lp = f_lp + NEG
        if not unsat:
            f_lp = f_lp + NEG
        just = hits & top_mask
        f_lp = f_lp + (~just).float() * NEG
        merged_scores = torch.cat([fin_scores, f_lp])
        merged_seqs = fin_seqs + cands
        merged_done = torch.cat([fin_done, just])
        best = torch.topk(merged_scores, k).indices.tolist()
        fin_seqs, fin_scores, fin_done = [merged_seqs[i] for i in best], merged_scores[best], merged_done[best]
        cur += 1
        best_len = (max_length - P) if (early == "never" and lp_pow > 0) else (cur - P)
        best_running = run_scores[0] / (best_len**lp_pow)
        worst = torch.where(fin_done, fin_scores.min(), torch.tensor(NEG))
        unsat = unsat and bool((best_running > worst).any())
        if not unsat or (bool(fin_done.all()) and early is True) or bool(hits.all()):
            break
        cache.reorder(list(range(k)), beam_src, cur - 1)
        b = make_batch([(i, cur - 1, running[i][-1]) for i in range(k)], [], [])
        logits = model.forward(b, cache).float()
        yield
    out = []
    for seq in fin_seqs:
        reason = "stop" if seq and seq[-1] in eos else "length"
        out.append((seq, reason))
    return out
