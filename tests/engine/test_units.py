"""Fast unit checks: sampling filters, stop-string hold-back.

    .venv/bin/python -m pytest tests/engine/test_units.py -q
"""

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
              SamplingParams(temperature=0, frequency_penalty=1.0),
              SamplingParams(temperature=0, presence_penalty=1.0)):
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

