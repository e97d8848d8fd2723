"""Evaluation metrics, computed with the field's reference libraries so Ember's numbers compare with published ones.

    ember eval smollm2-135m-instruct --task builtin:generate      # uses bleu, chrf, rouge, exact_match
    ember eval smollm2-135m-instruct --task builtin:perplexity    # uses perplexity, bits_per_byte

    from ember.evaluate.metrics import bleu, chrf, rouge, exact_match, perplexity
    bleu(["the cat sat"], ["the cat sat down"])   # -> {"score": ..., "signature": "nrefs:1|case:mixed|..."}

BLEU and chrF are sacrebleu's corpus scores on detokenized text; ROUGE is rouge-score (Porter stemming, the mean
of per-example F-measures); perplexity scores text with rolling windows as lm-evaluation-harness's
`loglikelihood_rolling` does, through the engine's score path (no second copy of the model). Entity-level F1
follows seqeval's default (conlleval) chunking, written in engine/bio.py (the tagger's entities use the same
rule) because seqeval is not a dependency.
"""

import math
import re
import string
import threading
from dataclasses import dataclass

from ember.engine.bio import get_entities
from ember.errors import InvalidRequest

# ----------------------------------------------------------------------------------------------- references


def _ref_lists(hyps: list[str], refs: list) -> list[list[str]]:
    """One list of references per hypothesis, from either one reference each or lists of references."""
    if len(hyps) != len(refs):
        raise InvalidRequest(f"{len(hyps)} hypotheses but {len(refs)} references")
    out = []
    for r in refs:
        rs = [r] if isinstance(r, str) else [str(x) for x in r]
        if not rs:
            raise InvalidRequest("every hypothesis needs at least one reference")
        out.append(rs)
    return out


def _ref_streams(hyps: list[str], refs: list) -> list[list[str]]:
    # sacrebleu wants one stream per reference "slot". Examples with fewer references repeat their first one:
    # a duplicate reference changes neither BLEU's clipped counts and closest length nor chrF's best match.
    per = _ref_lists(hyps, refs)
    n = max((len(r) for r in per), default=1)
    return [[r[i] if i < len(r) else r[0] for r in per] for i in range(n)]


# ------------------------------------------------------------------------------------------ BLEU, chrF, ROUGE


def bleu(hyps: list[str], refs: list, **options) -> dict:
    """sacrebleu corpus BLEU (0-100). options go to sacrebleu.metrics.BLEU (tokenize, lowercase, ...)."""
    from sacrebleu.metrics import BLEU

    m = BLEU(**options)
    res = m.corpus_score(list(hyps), _ref_streams(hyps, refs))
    return {"score": float(res.score), "signature": str(m.get_signature())}


def chrf(hyps: list[str], refs: list, **options) -> dict:
    """sacrebleu corpus chrF (0-100); chrF++ with word_order=2."""
    from sacrebleu.metrics import CHRF

    m = CHRF(**options)
    res = m.corpus_score(list(hyps), _ref_streams(hyps, refs))
    return {"score": float(res.score), "signature": str(m.get_signature())}


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def rouge(hyps: list[str], refs: list, use_stemmer: bool = True) -> dict:
    """Mean rouge-score F-measure per type, in [0, 1]. rougeLsum splits summaries into sentences on newlines;
    with several references an example takes its best-matching one (rouge-score's score_multi)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    per = _ref_lists(hyps, refs)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for h, rs in zip(hyps, per):
        scores = scorer.score(rs[0], h) if len(rs) == 1 else scorer.score_multi(rs, h)
        for k in ROUGE_TYPES:
            totals[k] += scores[k].fmeasure
    n = max(len(hyps), 1)
    return {k: totals[k] / n for k in ROUGE_TYPES}


# ------------------------------------------------------------------------------------------------ exact match

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.IGNORECASE)
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_text(s: str, *, ignore_case: bool = False, ignore_punctuation: bool = False,
                   ignore_articles: bool = False, ignore_numbers: bool = False, strip: bool = True) -> str:
    if ignore_case:
        s = s.lower()
    if ignore_punctuation:
        s = s.translate(_PUNCT)
    if ignore_articles:
        s = _ARTICLES.sub(" ", s)
    if ignore_numbers:
        s = re.sub(r"[0-9]", "", s)
    if strip:
        s = " ".join(s.split())  # collapse runs of whitespace; a trailing newline is not a different answer
    return s


def exact_match(hyps: list[str], refs: list, *, ignore_case: bool = False, ignore_punctuation: bool = False,
                ignore_articles: bool = False, ignore_numbers: bool = False, strip: bool = True,
                squad: bool = False) -> float:
    """Fraction of hypotheses equal to (any of) their references after normalisation.
    squad=True is SQuAD's normalisation: lower case, no punctuation, no articles, collapsed whitespace."""
    if squad:
        ignore_case = ignore_punctuation = ignore_articles = strip = True
    opts = dict(ignore_case=ignore_case, ignore_punctuation=ignore_punctuation, ignore_articles=ignore_articles,
                ignore_numbers=ignore_numbers, strip=strip)
    per = _ref_lists(hyps, refs)
    if not hyps:
        return 0.0
    hits = sum(normalize_text(h, **opts) in {normalize_text(r, **opts) for r in rs} for h, rs in zip(hyps, per))
    return hits / len(hyps)


# --------------------------------------------------------------------------------------------- classification


def accuracy(preds: list, refs: list) -> float:
    if len(preds) != len(refs):
        raise InvalidRequest(f"{len(preds)} predictions but {len(refs)} references")
    return sum(str(p) == str(r) for p, r in zip(preds, refs)) / len(refs) if refs else 0.0


def macro_f1(preds: list, refs: list, labels: list | None = None) -> float:
    """Unweighted mean of per-label F1 over `labels` (default: every label seen in refs or preds, as sklearn)."""
    if len(preds) != len(refs):
        raise InvalidRequest(f"{len(preds)} predictions but {len(refs)} references")
    preds, refs = [str(p) for p in preds], [str(r) for r in refs]
    labels = [str(x) for x in labels] if labels else sorted(set(refs) | set(preds))
    f1s = []
    for lab in labels:
        tp = sum(p == lab and r == lab for p, r in zip(preds, refs))
        fp = sum(p == lab and r != lab for p, r in zip(preds, refs))
        fn = sum(p != lab and r == lab for p, r in zip(preds, refs))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(f1s) / len(f1s) if f1s else 0.0


# ----------------------------------------------------------------------------------- entity-level F1 (tagging)


def entity_f1(preds: list[list[str]], refs: list[list[str]]) -> dict:
    """Micro precision/recall/F1 over entities (a predicted entity counts only if type and span both match)."""
    if len(preds) != len(refs):
        raise InvalidRequest(f"{len(preds)} predicted sequences but {len(refs)} reference sequences")
    pred_set, true_set = set(), set()
    for k, (p, r) in enumerate(zip(preds, refs)):
        pred_set |= {(k, *e) for e in get_entities(list(p))}
        true_set |= {(k, *e) for e in get_entities(list(r))}
    tp = len(pred_set & true_set)
    precision = tp / len(pred_set) if pred_set else 0.0
    recall = tp / len(true_set) if true_set else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "gold": len(true_set), "predicted": len(pred_set)}


def token_accuracy(preds: list[list[str]], refs: list[list[str]]) -> float:
    pairs = [(p, r) for ps, rs in zip(preds, refs) for p, r in zip(list(ps) + ["O"] * (len(rs) - len(ps)), rs)]
    return sum(p == r for p, r in pairs) / len(pairs) if pairs else 0.0


# -------------------------------------------------------------------------------------------------- perplexity


@dataclass
class LoglikelihoodResult:
    loglikelihood: float  # natural log, summed over scored tokens
    tokens: int  # scored tokens
    bytes: int  # UTF-8 bytes of the text
    words: int  # whitespace-separated words of the text

    @property
    def perplexity(self) -> float:
        return math.exp(-self.loglikelihood / self.tokens)

    @property
    def bits_per_byte(self) -> float:
        return -self.loglikelihood / (self.bytes * math.log(2))

    @property
    def word_perplexity(self) -> float:
        return math.exp(-self.loglikelihood / self.words)

    def to_dict(self) -> dict:
        return {"perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte,
                "word_perplexity": self.word_perplexity, "tokens": self.tokens, "bytes": self.bytes}


_engines: dict[tuple, object] = {}
_engines_lock = threading.Lock()
DEFAULT_MAX_LENGTH = 4096


def scoring_engine(model_ref, settings=None, max_length: int | None = None):
    """The engine that scores for a registry reference or HF folder, loaded once per process and window size
    (one at a time: evaluation runs are sequential). An Engine passes through."""
    from ember.engine.engine import Engine

    if isinstance(model_ref, Engine):
        return model_ref
    key = (str(model_ref), max_length, None if settings is None else str(settings.home))
    with _engines_lock:
        if key not in _engines:
            for old in _engines.values():
                old.close()
            _engines.clear()
            # A window of max_length inputs scores max_length + 1 tokens (the last one is never fed).
            _engines[key] = Engine.load(model_ref, settings, max_slots=8,
                                        max_seq_len=max_length or DEFAULT_MAX_LENGTH)
        return _engines[key]


def rolling_windows(n: int, max_length: int) -> list[tuple[int, int, int]]:
    """(input_start, target_start, target_end) over a stream of n tokens where every token after the first is
    predicted once, each with as much left context as fits in max_length: lm-evaluation-harness's
    `get_rolling_token_windows` with context_len=1 (the first window predicts everything it holds)."""
    out, start = [], 1
    while start < n:
        end = min(n, start + max_length)
        out.append((max(0, end - 1 - max_length), start, end))
        start = end
    return out


def loglikelihood_rolling(model_ref, text: str, *, max_length: int | None = None, prefix_token: int | None = None,
                          settings=None) -> LoglikelihoodResult:
    """Summed log-likelihood of `text` under a causal LM, scored by the engine (`Engine.score`: the windows
    are prompts whose per-position logprobs are summed; nothing is generated). `model_ref` is an Engine, a
    registry reference or a HF folder.

    The first token is scored only when there is a token to condition it on: the tokenizer's own BOS when it
    adds one, or `prefix_token` (lm-evaluation-harness passes EOS). Without either (SmolLM2) the first token is
    context, which is exactly what transformers' `model(ids, labels=ids).loss` scores."""
    engine = scoring_engine(model_ref, settings, max_length)
    ids = engine.tokenizer(text)["input_ids"]
    if prefix_token is not None:
        ids = [int(prefix_token), *ids]
    if len(ids) < 2:
        raise InvalidRequest("the text is too short to score: it needs at least two tokens")
    windows = rolling_windows(len(ids), max_length or engine.context_length)
    scored = engine.score([ids[i0:e] for i0, _, e in windows])
    total = sum(lp["logprob"] for (i0, s, _), lps in zip(windows, scored) for lp in lps[s - i0:])
    return LoglikelihoodResult(total, len(ids) - 1, len(text.encode("utf-8")), max(len(text.split()), 1))


def perplexity(model_ref, text: str, **kw) -> float:
    """Token-level perplexity, exp(mean negative log-likelihood per scored token)."""
    return loglikelihood_rolling(model_ref, text, **kw).perplexity


def bits_per_byte(model_ref, text: str, **kw) -> float:
    return loglikelihood_rolling(model_ref, text, **kw).bits_per_byte


def corpus_perplexity(model_ref, texts: list[str], **kw) -> dict:
    """Token-weighted perplexity and bits-per-byte over several documents (each scored on its own)."""
    results = [loglikelihood_rolling(model_ref, t, **kw) for t in texts]
    agg = LoglikelihoodResult(sum(r.loglikelihood for r in results), sum(r.tokens for r in results),
                              sum(r.bytes for r in results), sum(r.words for r in results))
    return {**agg.to_dict(), "documents": [r.to_dict() for r in results]}


METRIC_NAMES = ("bleu", "chrf", "rouge", "exact_match", "accuracy", "macro_f1", "entity_f1", "token_accuracy",
                "perplexity", "bits_per_byte", "word_perplexity")
