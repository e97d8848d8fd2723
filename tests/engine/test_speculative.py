"""Speculative decoding (engine/speculative.py): n-gram drafts verified k+1 positions at a time must not change
what the engine generates: greedy stays token-identical, seeded sampling gives the same text, and the
rejection sampler keeps the target distribution.

    .venv/bin/python -m pytest tests/engine/test_speculative.py -q
"""

from types import SimpleNamespace

import pytest
import torch

from ember.engine.engine import Engine
from ember.engine.sampling import SamplingParams, seeded_generator
from ember.engine.speculative import SpecConfig, ngram_lookup, verify
from ember.errors import InvalidRequest

# Half of them repeat or copy spans of the prompt, so that drafts get accepted; the rest are free text.
PROMPTS = [
    "Repeat exactly: the quick brown fox jumps over the lazy dog. the quick brown fox jumps over the lazy dog.",
    "1, 2, 3, 4, 5, 6, 7, 8, 9,", "a b c d e f g a b c d e f g a b c",
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\ndef mul(a, b):\n",
    "Summarize: The meeting is moved to Friday at 3 pm in room 12. Summary: The meeting",
    "Copy this list: apples, pears, plums, cherries. Copy: apples,", "<b>bold</b> <i>italic</i> <b>",
    "for i in range(10):\n    print(i)\nfor j in range(10):\n", "Monday Tuesday Wednesday Monday Tuesday",
    "The cat sat on the mat. The dog sat on the", "The capital of France is", "Once upon a time,",
    "The three primary colors are", "To make a cup of tea, you", "import numpy as np\n",
    "The largest planet in our solar system", "Dear hiring manager, I am writing to",
    "Explain photosynthesis in one sentence.", "What is 12 times 12?", "Write a haiku about autumn.",
]


@pytest.fixture(scope="module")
def spec_engine(smol_engine):
    # Same loaded weights, its own cache; max_batch above the batch so every row may speculate.
    engine = Engine(smol_engine.loaded, max_slots=len(PROMPTS), max_seq_len=512,
                    speculative=SpecConfig("ngram", num_tokens=4, max_batch=32))
    yield engine
    engine.close()


def test_ngram_lookup_finds_the_latest_longest_match():
    assert ngram_lookup([1, 2, 3, 9, 1, 2, 3, 7, 1, 2, 3], 2, 3, 1) == [7, 1]  # most recent "1 2 3"
    assert ngram_lookup([5, 6, 7, 8, 6], 3, 3, 1) == [7, 8, 6]  # only a unigram matches
    assert ngram_lookup([1, 2, 3], 4, 3, 1) == []
    assert ngram_lookup([4, 4, 4], 4, 2, 2) == [4]


def test_bad_spec_config_is_a_clear_error():
    with pytest.raises(InvalidRequest, match="ngram"):
        SpecConfig("medusa")
    with pytest.raises(InvalidRequest, match="num_speculative_tokens"):
        SpecConfig("ngram", num_tokens=0)


def test_speculative_greedy_equals_plain_greedy_on_20_prompts(smol_engine, spec_engine):
    p = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    plain = [c.choices[0].token_ids for c in smol_engine.generate(PROMPTS, p)]
    before = spec_engine.spec_stats.num_accepted_tokens
    spec = [c.choices[0].token_ids for c in spec_engine.generate(PROMPTS, p)]
    for prompt, a, b in zip(PROMPTS, plain, spec):
        assert b == a, prompt
    st = spec_engine.stats()["spec_decode"]
    assert spec_engine.spec_stats.num_accepted_tokens > before  # the repetitive prompts did take drafts
    assert 0 < st["acceptance_rate"] <= 1 and st["num_drafts"] > 0


def test_seed_gives_the_same_text_alone_batched_and_without_speculation(smol_engine, spec_engine):
    sp = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=16, seed=1234, ignore_eos=True)
    prompt = PROMPTS[0]
    alone = spec_engine.generate([prompt], sp)[0].choices[0].token_ids
    others = [SamplingParams(temperature=1.0, max_tokens=12, seed=s) for s in range(3)]
    batched = spec_engine.generate([PROMPTS[1], prompt, PROMPTS[3], PROMPTS[10]],
                                   [others[0], sp, others[1], others[2]])[1].choices[0].token_ids
    plain = smol_engine.generate([prompt], sp)[0].choices[0].token_ids
    assert alone == batched == plain


def _leviathan(p: torch.Tensor, draft: int, g: torch.Generator) -> int:
    """Reference (Leviathan et al. 2023, one-hot draft q): accept with min(1, p/q) = p(draft), else draw from
    norm(max(0, p - q)), which is p with the draft removed."""
    if torch.rand((), generator=g) < p[draft]:
        return draft
    r = p.clone()
    r[draft] = 0
    return int(torch.multinomial(r / r.sum(), 1, generator=g))


def test_rejection_sampler_keeps_the_target_distribution():
    torch.manual_seed(0)
    V, N, temp = 6, 6000, 0.7
    logits = torch.randn(3, V) * 1.5  # positions after the row's last token, draft 1 and draft 2
    params = SamplingParams(temperature=temp, max_tokens=10)
    target = torch.softmax(logits / temp, -1)
    drafts = [int(target[0].argmax()), int(target[1].argsort()[-2])]  # a likely and a less likely draft
    first, second, ref_first, accepted = torch.zeros(V), torch.zeros(V), torch.zeros(V), 0
    g_ref = torch.Generator().manual_seed(1)
    for i in range(N):
        row = SimpleNamespace(params=params, generator=seeded_generator(i), prompt_ids=[0], output_ids=[0])
        out = verify(logits.clone(), [row], [drafts])[0]
        first[out[0]] += 1
        if out[0] == drafts[0]:
            accepted += 1
            second[out[1]] += 1
        ref_first[_leviathan(target[0], drafts[0], g_ref)] += 1

    def chi2(counts, p):
        n = counts.sum()
        return float(((counts - n * p) ** 2 / (n * p)).sum())

    # 5 degrees of freedom: the 99.9% quantile is 20.5; both samplers must pass it.
    assert chi2(first, target[0]) < 20.5
    assert chi2(second, target[1]) < 20.5
    assert chi2(ref_first, target[0]) < 20.5
    assert abs(accepted / N - float(target[0, drafts[0]])) < 0.03


def test_generator_advances_once_per_emitted_token():
    """After a rejection the unused positions' noise is given back: the next draw is what plain decoding
    would draw for the next token."""
    params = SamplingParams(temperature=1.0, max_tokens=10)
    logits = torch.tensor([[0.0, 5.0, 0.0, 0.0]] * 4)  # token 1 almost surely: draft 3 is rejected at once
    g = seeded_generator(7)
    row = SimpleNamespace(params=params, generator=g, prompt_ids=[0], output_ids=[0])
    assert verify(logits, [row], [[3, 3, 3]])[0] == [1]
    ref = seeded_generator(7)
    torch.empty(4).exponential_(generator=ref)
    assert torch.equal(g.get_state(), ref.get_state())
