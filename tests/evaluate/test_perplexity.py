"""Perplexity of SmolLM2 (the bundled catalog model, read-only) against a direct transformers computation."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ember.config import Settings
from ember.evaluate.metrics import bits_per_byte, loglikelihood_rolling, perplexity

TEXT = ("The lighthouse stood at the end of a narrow spit of rock, and for most of the year the only visitors "
        "were the gulls. Its keeper climbed the spiral stairs every evening at dusk to light the lamp, polished "
        "the great glass lens, and wrote the weather in a leather-bound log.")


@pytest.fixture(scope="module")
def direct(smollm2_dir):
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    ids = tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    return {"ppl": math.exp(loss), "nll_sum": loss * (ids.shape[1] - 1), "tokens": ids.shape[1]}


def test_perplexity_matches_transformers_within_half_a_percent(catalog_home, direct):
    ours = perplexity("smollm2-135m-instruct", TEXT, settings=Settings(home=catalog_home))
    assert ours == pytest.approx(direct["ppl"], rel=0.005)
    assert 1.0 < ours < 1000.0


def test_perplexity_of_a_folder_and_bits_per_byte(smollm2_dir, direct):
    r = loglikelihood_rolling(smollm2_dir, TEXT)
    assert r.tokens == direct["tokens"] - 1  # SmolLM2 adds no BOS: the first token is context only
    assert -r.loglikelihood == pytest.approx(direct["nll_sum"], rel=0.005)
    assert bits_per_byte(smollm2_dir, TEXT) == pytest.approx(direct["nll_sum"] / (len(TEXT.encode()) * math.log(2)),
                                                             rel=0.005)


def test_engine_scoring_gives_todays_numbers(smollm2_dir, direct):
    """Perplexity now comes from the engine's score path; the numbers are those of the transformers forward it
    replaced (fp32) within 1e-6 relative, and the builtin task's stored numbers follow."""
    r = loglikelihood_rolling(smollm2_dir, TEXT)
    assert -r.loglikelihood == pytest.approx(direct["nll_sum"], rel=1e-6)
    assert r.perplexity == pytest.approx(direct["ppl"], rel=1e-6)


def test_rolling_windows_shorter_than_the_text(smollm2_dir, direct):
    """Windows of 16 tokens still score every token once; with less context the perplexity can only be
    worse on natural text, and it stays finite."""
    r = loglikelihood_rolling(smollm2_dir, TEXT, max_length=16)
    assert r.tokens == direct["tokens"] - 1
    assert r.perplexity > direct["ppl"] and math.isfinite(r.perplexity)
