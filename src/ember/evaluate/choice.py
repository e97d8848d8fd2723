"""Multiple-choice evaluation by log-likelihood, defined exactly as lm-evaluation-harness defines it.

    ember eval smollm2-135m-instruct --task builtin:choice          # acc, acc_norm

Each example has a context, a list of choices and the index of the gold one. Every choice is scored as the
continuation `target_delimiter + choice` of the context: the summed logprob of its tokens (one `Engine.score`
request per choice, all batched through the engine's step loop). `acc`: the choice with the highest
log-likelihood is the gold one; `acc_norm`: the same after dividing each log-likelihood by the choice's
length in characters; `acc_bytes`: by its length in UTF-8 bytes (lm-eval's `acc_norm` and `acc_bytes`).
Tokenization is lm-eval's `_encode_pair`: trailing spaces of the context move to the continuation, the pair is
encoded whole (no special tokens added) and the continuation is what follows the context's own tokens; an
empty context is replaced by the prefix token (BOS, else EOS). So `lm_eval --model local-completions` against
`ember serve` and `ember eval` give the same numbers on the same items (tests/evaluate/test_lm_eval.py).
"""

from ember.errors import InvalidRequest
from ember.evaluate.tasks import Task, render

METRICS = ("acc", "acc_norm", "acc_bytes")


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's `_encode_pair` (causal models) plus its empty-context rule."""

    def enc(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    if context == "":
        cont = enc(continuation)
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return ([prefix], cont) if prefix != cont[0] else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole, ctx = enc(context + continuation), enc(context)
    return ctx, whole[len(ctx):]


def loglikelihoods(engine, pairs: list[tuple[str, str]]) -> list[float]:
    """Summed logprob of each continuation given its context (left-truncated to the engine's context)."""
    prompts, ctxlens = [], []
    for context, continuation in pairs:
        ctx, cont = encode_pair(engine.tokenizer, context, continuation)
        if not cont:
            raise InvalidRequest(f"the continuation {continuation!r} has no tokens of its own", param="choices")
        ids = (ctx + cont)[-(engine.context_length + 1):]
        prompts.append(ids)
        ctxlens.append(len(ids) - len(cont))
    scored = engine.score(prompts)
    return [sum(lp["logprob"] for lp in lps[n:]) for lps, n in zip(scored, ctxlens)]


def argmax(xs: list[float]) -> int:
    """numpy's argmax: the first of equal maxima."""
    return max(range(len(xs)), key=lambda i: (xs[i], -i))


def example_scores(lls: list[float], choices: list[str], gold: int) -> dict:
    return {"acc": float(argmax(lls) == gold),
            "acc_norm": float(argmax([ll / len(c) for ll, c in zip(lls, choices)]) == gold),
            "acc_bytes": float(argmax([ll / len(c.encode("utf-8")) for ll, c in zip(lls, choices)]) == gold)}


def read_example(task: Task, ex: dict, i: int) -> tuple[str, list[str], int]:
    """(context, choices, gold index) of one JSONL record; a gold given as the choice's text is accepted."""
    choices = ex.get(task.choices)
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise InvalidRequest(f"example {i} of task {task.name}: field {task.choices!r} must be a list of at least "
                             "two non-empty strings", param="choices")
    gold = ex[task.reference]
    if isinstance(gold, str) and gold in choices:
        gold = choices.index(gold)
    if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
        raise InvalidRequest(f"example {i} of task {task.name}: {task.reference!r} must be the index of a choice "
                             f"(0..{len(choices) - 1}) or its text", param="reference")
    return render(task.prompt, ex), choices, gold


def run(engine, task: Task, examples: list[dict], on_progress=None) -> tuple[dict, list[dict]]:
    """-> ({metric: mean over examples}, per-example outputs), for the metrics the task names."""
    items = [read_example(task, ex, i) for i, ex in enumerate(examples)]
    outputs, totals = [], dict.fromkeys(METRICS, 0.0)
    for start in range(0, len(items), task.batch_size):
        batch = items[start:start + task.batch_size]
        pairs = [(ctx, task.target_delimiter + c) for ctx, choices, _ in batch for c in choices]
        lls = loglikelihoods(engine, pairs)
        for ctx, choices, gold in batch:
            mine, lls = lls[: len(choices)], lls[len(choices):]
            scores = example_scores(mine, choices, gold)
            for k, v in scores.items():
                totals[k] += v
            outputs.append({"index": len(outputs), "context": ctx, "choices": choices, "gold": gold,
                            "loglikelihoods": mine, "prediction": argmax(mine), **scores})
        if on_progress:
            on_progress(len(outputs), len(items))
    wanted = [m["name"] for m in task.metrics]
    return {k: totals[k] / len(items) for k in METRICS if k in wanted}, outputs
