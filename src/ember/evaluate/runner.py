"""Run an evaluation task against one model version and store the result in the registry.

    ember eval smollm2-135m-instruct --task builtin:generate --limit 8

Generation (generate, classify and tag on causal LMs) runs through Ember's engine, a batch of `batch_size`
prompts at a time so progress can be reported; decoding is greedy unless the task sets a temperature (then
seeded, so a rerun gives the same numbers). Perplexity (metrics.loglikelihood_rolling) and multiple choice
(evaluate/choice.py) are scored by the same engine's score path (prompt logprobs, nothing generated).
Encoder classifiers / taggers (`*ForSequenceClassification`, `*ForTokenClassification`) run through the
engine's Encoder (engine/encoders.py), the same path `POST /v1/classify` and `/v1/tag` serve.
"""

import time
from collections.abc import Callable

from ember.config import Settings, get_settings
from ember.errors import InvalidRequest
from ember.evaluate import metrics as M
from ember.evaluate.tasks import Task, load_examples, render

Progress = Callable[[int, int], None]  # (done, total)


def run(ref: str, task: Task, *, settings: Settings | None = None, limit: int | None = None, store: bool = True,
        on_progress: Progress | None = None) -> dict:
    """Evaluate `ref` on `task`; returns the run (metrics, settings, digests, outputs_digest, id when stored)."""
    from ember.store import evals, registry

    settings = settings or get_settings()
    info = registry.resolve(ref, settings)  # pin the version now: an alias may move while we run
    examples = load_examples(task, limit)
    started = time.perf_counter()
    if task.type == "perplexity":
        metrics, outputs = _perplexity(info.ref, task, examples, settings, on_progress)
    elif task.type == "multiple_choice":
        metrics, outputs = _multiple_choice(info.ref, task, examples, settings, on_progress)
    else:
        arch = " ".join(info.metadata.get("architectures") or [str(info.metadata.get("architecture", ""))])
        if task.type in ("classify", "tag") and ("ForSequenceClassification" in arch or "ForTokenClassification"
                                                 in arch):
            preds, outputs = _encoder_predict(info.ref, task, examples, settings, on_progress)
        else:
            preds, outputs = _generate(info.ref, task, examples, settings, on_progress)
        metrics, signatures = score(task, preds, [ex[task.reference] for ex in examples], outputs)
    used = {**task.settings(), "source": task.source, "examples": len(examples), "limit": limit,
            "seconds": round(time.perf_counter() - started, 2)}
    if task.type not in ("perplexity", "multiple_choice"):
        used["signatures"] = signatures
    result = {"ref": info.ref, "task": task.name, "task_digest": task.digest,
              "data_digest": task.data_digest(limit), "settings": used, "metrics": metrics}
    if not store:
        return {**result, "outputs": outputs}
    return evals.record(info.ref, task.name, task_digest=result["task_digest"], data_digest=result["data_digest"],
                        settings_used=used, metrics=metrics, outputs=outputs, settings=settings)


# ------------------------------------------------------------------------------------------------- scoring


def score(task: Task, preds: list, refs: list, outputs: list[dict] | None = None) -> tuple[dict, dict]:
    """Flat {metric: float} for a task's metric list (+ sacrebleu signatures)."""
    out, sigs = {}, {}
    for spec in task.metrics:
        name, opts = spec["name"], {k: v for k, v in spec.items() if k != "name"}
        if name in ("bleu", "chrf"):
            r = (M.bleu if name == "bleu" else M.chrf)(preds, refs, **opts)
            out[name], sigs[name] = r["score"], r["signature"]
        elif name == "rouge":
            out.update(M.rouge(preds, refs, **opts))
        elif name == "exact_match":
            out["exact_match"] = M.exact_match(preds, refs, **opts)
        elif name == "accuracy":
            out["accuracy"] = M.accuracy(preds, refs)
        elif name == "macro_f1":
            out["macro_f1"] = M.macro_f1(preds, refs, labels=task.labels)
        elif name == "entity_f1":
            r = M.entity_f1(preds, refs)
            out.update({"entity_f1": r["f1"], "entity_precision": r["precision"], "entity_recall": r["recall"]})
        elif name == "token_accuracy":
            out["token_accuracy"] = M.token_accuracy(preds, refs)
    if outputs is not None and task.type in ("classify", "tag"):
        for o, p in zip(outputs, preds):
            o["prediction"] = p
    return out, sigs


def _multiple_choice(ref, task, examples, settings, on_progress):
    from ember.evaluate import choice

    return choice.run(M.scoring_engine(ref, settings), task, examples, on_progress)


def _perplexity(ref, task, examples, settings, on_progress):
    results, outputs = [], []
    for i, ex in enumerate(examples):
        text = ex.get(task.text_field)
        if not isinstance(text, str) or not text.strip():
            raise InvalidRequest(f"example {i} of task {task.name} has no text in field {task.text_field!r}",
                                 param="text_field")
        r = M.loglikelihood_rolling(ref, text, max_length=task.max_length, settings=settings)
        results.append(r)
        outputs.append({"index": i, "file": ex.get("file"), **r.to_dict(), "loglikelihood": r.loglikelihood})
        if on_progress:
            on_progress(i + 1, len(examples))
    agg = M.LoglikelihoodResult(sum(r.loglikelihood for r in results), sum(r.tokens for r in results),
                                sum(r.bytes for r in results), sum(r.words for r in results))
    full = agg.to_dict()
    wanted = {m["name"] for m in task.metrics}
    metrics = {k: full[k] for k in ("perplexity", "bits_per_byte", "word_perplexity") if k in wanted}
    metrics["tokens"] = agg.tokens
    return metrics, outputs


# ---------------------------------------------------------------------------------------------- generation


def _generate(ref, task, examples, settings, on_progress):
    from ember.engine.engine import Engine
    from ember.engine.sampling import SamplingParams

    engine = Engine.load(ref, settings, max_slots=min(task.batch_size, 64))
    try:
        prompts = []
        for ex in examples:
            text = render(task.prompt or "{" + task.tokens + "}", ex)
            if task.chat:
                msgs = ([{"role": "system", "content": task.system}] if task.system else [])
                prompts.append((text, engine.chat_prompt([*msgs, {"role": "user", "content": text}])))
            else:
                prompts.append((text, text))
        texts = []
        for start in range(0, len(prompts), task.batch_size):
            batch = prompts[start:start + task.batch_size]
            params = [SamplingParams(max_tokens=task.max_tokens, temperature=task.temperature, stop=task.stop,
                                     seed=None if task.temperature == 0 else 1234 + start + i)
                      for i in range(len(batch))]
            texts += [c.text for c in engine.generate([p for _, p in batch], params)]
            if on_progress:
                on_progress(len(texts), len(prompts))
    finally:
        engine.close()
    outputs = [{"index": i, "prompt": p, "output": o, "reference": ex[task.reference]}
               for i, ((p, _), o, ex) in enumerate(zip(prompts, texts, examples))]
    if task.type == "classify":
        labels = task.labels or sorted({str(ex[task.reference]) for ex in examples})
        return [pick_label(o, labels) for o in texts], outputs
    if task.type == "tag":
        return [parse_tags(o, len(ex[task.tokens])) for o, ex in zip(texts, examples)], outputs
    return [o.strip() for o in texts], outputs


def pick_label(output: str, labels: list[str]) -> str:
    """The label a generated answer names: an exact (case-insensitive) answer, else the label mentioned first.
    An answer naming none of them is kept as it is (and so counts as wrong)."""
    norm = M.normalize_text(output, ignore_case=True, ignore_punctuation=True)
    by_norm = {M.normalize_text(lab, ignore_case=True, ignore_punctuation=True): lab for lab in labels}
    if norm in by_norm:
        return by_norm[norm]
    found = [(norm.find(n), -len(n), lab) for n, lab in by_norm.items() if n and f" {n} " in f" {norm} "]
    return min(found)[2] if found else output.strip()


def parse_tags(output: str, n: int) -> list[str]:
    """One tag per word from a generated line of tags; missing tags are O, extra ones are dropped."""
    words = output.strip().splitlines()[0].replace(",", " ").split() if output.strip() else []
    # Words that are not tags ("Tags:", an echoed sentence) are dropped rather than read as O, so a chatty
    # preamble does not shift every tag after it.
    tags = [w for w in words if w == "O" or (w[:2] in ("B-", "I-", "E-", "S-") and len(w) > 2)][:n]
    return tags + ["O"] * (n - len(tags))


# ------------------------------------------------------------------------------------------------ encoders


def _encoder_predict(ref, task, examples, settings, on_progress):
    from ember.engine.encoders import Encoder

    enc = Encoder.load(ref, settings)
    preds, outputs = [], []
    for i, ex in enumerate(examples):
        if task.type == "classify":
            text = render(task.input or task.prompt, ex)
            pred = enc.classify([text])[0][0]["label"]
            outputs.append({"index": i, "input": text, "output": pred, "reference": ex[task.reference]})
        else:
            words = [str(w) for w in ex[task.tokens]]
            pred = [t["tag"] for t in enc.tag_words([words])[0]]
            outputs.append({"index": i, "tokens": words, "output": pred, "reference": ex[task.reference]})
        preds.append(pred)
        if on_progress:
            on_progress(i + 1, len(examples))
    return preds, outputs
