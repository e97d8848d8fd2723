"""Constrained decoding in the engine (engine/structured.py) on a tiny random model with SmolLM2's tokenizer:
a random model makes the point best, since whatever it would say, the grammar decides the shape."""

import json

import pytest

from ember.engine.sampling import SamplingParams
from ember.engine.structured import Constraint
from ember.errors import InvalidRequest

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                           "n": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["name", "n"]}


@pytest.fixture(scope="module")
def engine(tiny_chat_dir):
    from ember.engine.engine import Engine

    e = Engine.load(tiny_chat_dir, max_slots=8, max_seq_len=256)
    yield e
    e.close()


def test_schema_regex_choice_grammar_with_seeds_n_and_greedy(engine):
    schema = Constraint("json_schema", SCHEMA)
    out = engine.generate(["a", "b"], SamplingParams(max_tokens=40, temperature=1.0, seed=3, n=3,
                                                       constraint=schema))
    for comp in out:
        for c in comp.choices:
            assert c.finish_reason == "stop"
            obj = json.loads(c.text)
            assert set(obj) == {"name", "n"} and len(obj["name"]) <= 8 and 0 <= obj["n"] <= 99
    again = engine.generate(["a"], SamplingParams(max_tokens=40, temperature=1.0, seed=3, n=3, constraint=schema))
    assert [c.text for c in again[0].choices] == [c.text for c in out[0].choices]  # same seed, same text

    greedy = SamplingParams(max_tokens=10, temperature=0, constraint=Constraint("choice", ["red", "green"]))
    assert engine.generate(["x"], greedy)[0].text in ("red", "green")
    rx = engine.generate(["x"], SamplingParams(max_tokens=10, temperature=1.0, seed=1,
                                               constraint=Constraint("regex", "[0-9]{2}-[a-c]{2}")))[0]
    assert rx.choices[0].finish_reason == "stop" and rx.text[2] == "-" and len(rx.text) == 5
    lark = Constraint("grammar", 'start: "hi " NAME\nNAME: /[a-z]{1,5}/')
    assert engine.generate(["x"], SamplingParams(max_tokens=10, seed=2, constraint=lark))[0].text.startswith("hi ")
    gbnf = Constraint("grammar", 'root ::= "yes" | "no"')
    assert engine.generate(["x"], SamplingParams(max_tokens=4, seed=2, constraint=gbnf))[0].text in ("yes", "no")


def test_unconstrained_rows_are_unaffected_and_stop_strings_still_apply(engine):
    plain = SamplingParams(max_tokens=12, temperature=1.0, seed=7)
    alone = engine.generate(["hello"], plain)[0].text
    mixed = engine.generate(["hello", "hello"], [plain, SamplingParams(max_tokens=12, temperature=1.0, seed=7,
                                                                      constraint=Constraint("json_object"))])
    assert mixed[0].text == alone
    stopped = engine.generate(["x"], SamplingParams(max_tokens=20, temperature=0, stop=["b"],
                                                    constraint=Constraint("regex", "a{3}b{3}c")))[0]
    assert stopped.text == "aaa"


def test_bad_constraints_are_invalid_requests(engine):
    for c in [Constraint("regex", "[a-"), Constraint("regex", "(a+)+$"),
              Constraint("json_schema", {"type": "strin"}), Constraint("choice", []),
              Constraint("grammar", "start: undefined_rule")]:
        with pytest.raises(InvalidRequest):
            engine.compile_constraint(c)
    with pytest.raises(InvalidRequest, match="beam search"):
        SamplingParams(num_beams=2, constraint=Constraint("json_object"))
