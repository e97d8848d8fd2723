"""The vLLM adapter (engine/vllm_backend.py) on the CPU: SamplingParams mapping both ways, and the adapter's
request / stream translation driven by a tiny fake of vLLM's AsyncLLM (tests/fakes/vllm) - the third-party
engine is the only stand-in; Ember's validation, prompts, deltas and completions are the real ones."""

import asyncio
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

from ember.engine.sampling import SamplingParams
from ember.engine.structured import Constraint
from ember.engine.vllm_backend import VllmEngine, from_vllm, to_vllm
from ember.errors import InvalidRequest, Unsupported

FAKE = Path(__file__).parents[1] / "fakes" / "vllm" / "v1" / "engine" / "async_llm.py"


def _fake_module():
    spec = importlib.util.spec_from_file_location("fake_vllm_async_llm", FAKE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def engine(tiny_chat_dir):
    from ember.models.loading import load_tokenizer

    fake = _fake_module()
    e = VllmEngine(lambda: fake.AsyncLLM(str(tiny_chat_dir), 8), load_tokenizer(tiny_chat_dir),
                   vocab_size=49152, context_length=512, eos_ids=[2], max_slots=8,
                   make_params=lambda kw: SimpleNamespace(**kw))
    yield e
    e.close()


def test_sampling_params_map_both_ways():
    p = SamplingParams(max_tokens=7, temperature=0.7, top_p=0.9, top_k=0, min_p=0.05, repetition_penalty=1.1,
                       presence_penalty=0.5, frequency_penalty=-0.5, logit_bias={5: 2.0}, seed=3, stop=["\n"],
                       stop_token_ids=[9], ignore_eos=True, n=2, logprobs=3, prompt_logprobs=1,
                       skip_special_tokens=False, constraint=Constraint("regex", "[ab]+"))
    kw = to_vllm(p, 7)
    assert kw["top_k"] == -1  # vLLM's "off"
    assert kw["structured_outputs"] == {"regex": "[ab]+"}
    assert kw["logit_bias"] == {5: 2.0} and kw["n"] == 2 and kw["seed"] == 3
    back = from_vllm(kw)
    assert back == p
    assert to_vllm(SamplingParams(max_tokens=0, prompt_logprobs=0), 0)["max_tokens"] == 1  # scoring: one token
    assert to_vllm(SamplingParams(constraint=Constraint("json_object")), 4)["structured_outputs"] == \
        {"json_object": True}
    assert to_vllm(SamplingParams(top_k=40), 4)["top_k"] == 40
    with pytest.raises(Unsupported):
        to_vllm(SamplingParams(num_beams=2), 4)


def test_generate_translates_outputs(engine):
    tok = engine.tokenizer
    p = SamplingParams(max_tokens=5, temperature=0.8, n=2, logprobs=2, seed=1)
    comp = engine.generate(["Hello there"], p)[0]
    walk = engine.llm.walk
    assert [c.index for c in comp.choices] == [0, 1]
    for c in comp.choices:
        assert c.finish_reason == "length" and len(c.token_ids) == 5
        assert c.text == "".join(tok.decode([t]) for t in c.token_ids)
        assert [lp["token_id"] for lp in c.logprobs] == c.token_ids
        assert all(len(lp["top"]) == 2 and lp["top"][0][1] >= lp["top"][1][1] for lp in c.logprobs)
    assert comp.choices[0].token_ids == walk[:5]
    assert comp.usage.prompt_tokens == len(tok("Hello there")["input_ids"]) and comp.usage.completion_tokens == 10
    rid, prompt, sp = engine.llm.requests[-1]
    assert prompt["prompt_token_ids"] == comp.prompt_token_ids and sp.n == 2 and sp.seed == 1


def test_stop_strings_and_tokens(engine):
    stop_tok = engine.llm.walk[2]
    comp = engine.generate(["x"], SamplingParams(max_tokens=9, stop_token_ids=[stop_tok]))[0]
    assert comp.choices[0].finish_reason == "stop" and len(comp.choices[0].token_ids) == 3
    comp = engine.generate(["x"], SamplingParams(max_tokens=9, stop=["engine"]))[0]
    assert comp.choices[0].finish_reason == "stop" and "engine" not in comp.choices[0].text


def test_score_is_prompt_logprobs_without_output(engine):
    ids = engine.encode("one two three")
    lps = engine.score([ids], k=1)[0]
    assert lps[0] is None and [lp["token_id"] for lp in lps[1:]] == ids[1:]
    assert all(lp["rank"] == 1 and len(lp["top"]) == 1 for lp in lps[1:])


def test_validation_is_the_cpu_engines(engine):
    with pytest.raises(InvalidRequest) as e:
        engine.add_request("hi", SamplingParams(max_tokens=600), lambda d: None)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(Unsupported):
        engine.check([1, 2], SamplingParams(num_beams=2))
    with pytest.raises(InvalidRequest):
        engine.compile_constraint(Constraint("regex", "(" * 70000))
    # The chat template is rendered by the CPU engine's code: user text never becomes a control token.
    start = engine.tokenizer.convert_tokens_to_ids("<|im_start|>")
    plain = engine.chat_prompt([{"role": "user", "content": "hi"}])
    tricky = engine.chat_prompt([{"role": "user", "content": "<|im_start|>hi"}])
    assert tricky.count(start) == plain.count(start)


def test_stream_stops_early_and_aborts_in_vllm(engine):
    async def consume():
        got = []
        async for d in engine.stream("hi", SamplingParams(max_tokens=200), request_id="early"):
            got.append(d)
            if len(got) == 3:
                break
        return got

    got = asyncio.run(consume())
    assert len(got) == 3 and all(d.finish_reason is None for d in got)
    deadline = asyncio.run(_wait(lambda: "early" in engine.llm.aborted and engine.num_running == 0))
    assert deadline


def test_abort_ends_request_with_usage(engine):
    deltas = []
    rid = engine.add_request("hello", SamplingParams(max_tokens=300, n=2), deltas.append)
    asyncio.run(_wait(lambda: len(deltas) >= 4))
    engine.abort(rid, wait=True)
    asyncio.run(_wait(lambda: any(d.usage is not None for d in deltas)))
    ends = [d for d in deltas if d.finish_reason]
    assert sorted(d.index for d in ends) == [0, 1] and {d.finish_reason for d in ends} == {"abort"}
    assert deltas[-1].usage.completion_tokens == sum(len(d.token_ids) for d in deltas)
    assert engine.cache_usage == 0


async def _wait(cond, timeout=30.0):
    for _ in range(int(timeout / 0.02)):
        if cond():
            return True
        await asyncio.sleep(0.02)
    return False
