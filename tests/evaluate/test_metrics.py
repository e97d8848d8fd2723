"""Metrics against their reference libraries: sacrebleu, rouge-score, and seqeval's documented examples."""

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from ember.errors import InvalidRequest
from ember.evaluate.metrics import (
    accuracy,
    bleu,
    chrf,
    entity_f1,
    exact_match,
    macro_f1,
    rolling_windows,
    rouge,
    token_accuracy,
)

HYPS = ["The cat sat on the mat.", "A quick brown fox jumps over the lazy dog!", "Hello there, general Kenobi",
        "It rained all day in the city."]
REFS = ["The cat is sitting on the mat.", "The quick brown fox jumped over the lazy dog.", "Hello there!",
        "All day long it rained in town."]
REFS2 = ["A cat sat on a mat.", "A fast brown fox leaps over a lazy dog.", "Hi there, General Kenobi.",
         "It was raining the whole day in the city."]


def test_bleu_equals_sacrebleu_corpus_score():
    ours = bleu(HYPS, REFS)
    assert ours["score"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score, abs=1e-9)
    assert ours["signature"].startswith("nrefs:1|") and "tok:13a" in ours["signature"]


def test_bleu_and_chrf_with_several_references():
    multi = [[a, b] for a, b in zip(REFS, REFS2)]
    assert bleu(HYPS, multi)["score"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS, REFS2]).score, abs=1e-9)
    assert chrf(HYPS, multi)["score"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS, REFS2]).score, abs=1e-9)
    assert bleu(HYPS, multi)["signature"].startswith("nrefs:2|")
    # An example with fewer references repeats its first: the score is that of the examples' own sets.
    ragged = [[REFS[0]], *multi[1:]]
    full = [REFS[0], *REFS2[1:]]
    assert bleu(HYPS, ragged)["score"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS, full]).score, abs=1e-9)


def test_chrf_equals_sacrebleu_corpus_score():
    ours = chrf(HYPS, REFS)
    assert ours["score"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score, abs=1e-9)
    assert "chrF" not in ours["signature"] and "nc:6" in ours["signature"]
    assert chrf(HYPS, REFS, word_order=2)["score"] == pytest.approx(
        sacrebleu.corpus_chrf(HYPS, [REFS], word_order=2).score, abs=1e-9)


def test_rouge_equals_rouge_score_mean_f_measures():
    hyps = [*HYPS, "The first line.\nThe second line here."]
    refs = [*REFS, "The second line.\nAnd the first line."]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    expected = {k: sum(scorer.score(r, h)[k].fmeasure for h, r in zip(hyps, refs)) / len(hyps)
                for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")}
    ours = rouge(hyps, refs)
    assert set(ours) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    for k, v in expected.items():
        assert ours[k] == pytest.approx(v, abs=1e-12)
        assert 0.0 <= ours[k] <= 1.0
    assert ours["rougeLsum"] != ours["rougeL"]  # newlines split sentences for Lsum only


def test_rouge_multi_reference_takes_the_best():
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    ours = rouge(["the cats are sitting"], [["a dog barks", "the cat sits"]])
    assert ours["rouge1"] == pytest.approx(scorer.score("the cat sits", "the cats are sitting")["rouge1"].fmeasure)


def test_exact_match_normalisation_options():
    hyps, refs = ["Paris.", " paris ", "The Answer", "Berlin"], ["Paris", "Paris", "answer", "Rome"]
    assert exact_match(hyps, refs) == 0.0
    assert exact_match(hyps, refs, ignore_case=True) == 0.25
    assert exact_match(hyps, refs, ignore_case=True, ignore_punctuation=True) == 0.5
    assert exact_match(hyps, refs, squad=True) == 0.75
    assert exact_match(["Rome"], [["Paris", "Rome"]]) == 1.0
    with pytest.raises(InvalidRequest):
        exact_match(["a"], ["a", "b"])


def test_accuracy_and_macro_f1():
    preds = ["pos", "pos", "neg", "neg", "pos"]
    refs = ["pos", "neg", "neg", "neg", "neu"]
    assert accuracy(preds, refs) == pytest.approx(3 / 5)
    # per label F1: pos 2*1/(2+2+0)=0.5, neg 2*2/(4+0+1)=0.8, neu 0
    assert macro_f1(preds, refs) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_entity_f1_matches_seqeval_documented_example():
    y_true = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    y_pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    r = entity_f1(y_pred, y_true)
    assert (r["precision"], r["recall"], r["f1"]) == (0.5, 0.5, 0.5)
    assert entity_f1(y_true, y_true)["f1"] == 1.0
    assert token_accuracy(y_pred, y_true) == pytest.approx(8 / 10)  # positions 2 and 3 differ


@pytest.mark.parametrize("n,max_length", [(2, 4), (10, 4), (9, 4), (100, 7), (5, 100)])
def test_rolling_windows_predict_every_token_once_within_the_window(n, max_length):
    windows = rolling_windows(n, max_length)
    targets = [t for _, s, e in windows for t in range(s, e)]
    assert targets == list(range(1, n))
    for i0, s, e in windows:
        assert e - 1 - i0 <= max_length and i0 <= s - 1
