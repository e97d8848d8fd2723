"""Engine acceptance on SmolLM2-135M: greedy and beam equality with transformers, seeds, abort, stream.

    .venv/bin/python -m pytest tests/engine -q
"""

import asyncio
import threading

import pytest
import torch

from ember.engine.sampling import SamplingParams
from ember.errors import InvalidRequest

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "The three primary colors are", "To make a cup of tea, you", "import numpy as np\n",
           "The largest planet in our solar system", "Dear hiring manager, I am writing to"]
GREEDY = SamplingParams(temperature=0, max_tokens=64)


@pytest.fixture(scope="module")
def hf_greedy(smol_engine, smol_hf):
    out = []
    with torch.inference_mode():
        for p in PROMPTS:
            ids = torch.tensor([smol_engine.encode(p)])
            out.append(smol_hf.generate(ids, do_sample=False, max_new_tokens=64)[0, ids.shape[1]:].tolist())
    return out


def _upto_eos(ids, eos):
    """transformers pads after EOS; Ember stops there."""
    for i, t in enumerate(ids):
        if t in eos:
            return ids[: i + 1]
    return ids


def test_greedy_alone_matches_transformers(smol_engine, hf_greedy):
    for p, ref in zip(PROMPTS, hf_greedy):
        got = smol_engine.generate([p], GREEDY)[0].choices[0].token_ids
        assert got == _upto_eos(ref, smol_engine.eos_ids), p


def test_greedy_mixed_with_sampled_requests_matches_transformers(smol_engine, hf_greedy):
    prompts, params = [], []
    for i, p in enumerate(PROMPTS):
        prompts += [p, "Tell me a joke about cats."]
        params += [GREEDY, SamplingParams(temperature=1.0, top_p=0.9, top_k=50, max_tokens=40 + i, seed=i,
                                          repetition_penalty=1.1, presence_penalty=0.5)]
    outs = smol_engine.generate(prompts, params)
    for i, ref in enumerate(hf_greedy):
        assert outs[2 * i].choices[0].token_ids == _upto_eos(ref, smol_engine.eos_ids), PROMPTS[i]


def test_beam_search_matches_transformers(smol_engine, smol_hf):
    for p in PROMPTS[:3]:
        ids = torch.tensor([smol_engine.encode(p)])
        with torch.inference_mode():
            ref = smol_hf.generate(ids, do_sample=False, num_beams=4, max_new_tokens=24)[0, ids.shape[1]:].tolist()
        got = smol_engine.generate([p], SamplingParams(num_beams=4, max_tokens=24))[0].choices[0].token_ids
        assert got == ref[: len(got)] and all(t in smol_engine.eos_ids for t in ref[len(got):]), p


def _seeded_alone_and_batched(engine, n_others: int) -> tuple[list[int], list[int]]:
    """One seeded request alone, then the same one in the middle of n_others other seeded requests."""
    sp = SamplingParams(temperature=0.9, top_p=0.95, max_tokens=24, seed=1234)
    alone = engine.generate(["Write a poem about the sea."], sp)[0].choices[0].token_ids
    others = [SamplingParams(temperature=1.0, max_tokens=30, seed=s) for s in range(n_others)]
    half = n_others // 2
    batched = engine.generate(["Hello"] * half + ["Write a poem about the sea."] + ["Why?"] * (n_others - half),
                              others[:half] + [sp] + others[half:])
    return alone, batched[half].choices[0].token_ids


def test_same_seed_same_output_alone_or_batched(smol_engine):
    alone, batched = _seeded_alone_and_batched(smol_engine, 5)
    assert batched == alone
    other_seed = smol_engine.generate(["Write a poem about the sea."],
                                      SamplingParams(temperature=0.9, top_p=0.95, max_tokens=24, seed=99))
    assert other_seed[0].choices[0].token_ids != alone


def test_n_choices_and_logprobs(smol_engine):
    c = smol_engine.generate(["List three fruits:"], SamplingParams(temperature=1.0, n=3, max_tokens=12, seed=5,
                                                                   logprobs=3))[0]
    assert [ch.index for ch in c.choices] == [0, 1, 2]
    assert len({tuple(ch.token_ids) for ch in c.choices}) > 1
    assert c.usage.completion_tokens == sum(len(ch.token_ids) for ch in c.choices)
    lp = c.choices[0].logprobs[0]
    assert len(lp["top"]) == 3 and lp["logprob"] <= 0 and lp["token_id"] == c.choices[0].token_ids[0]


def test_stop_strings_and_max_tokens(smol_engine):
    full = smol_engine.generate(["Count: 1, 2, 3,"], SamplingParams(temperature=0, max_tokens=20))[0].choices[0]
    assert full.finish_reason == "length" and len(full.token_ids) == 20
    cut = full.text.index("5")
    c = smol_engine.generate(["Count: 1, 2, 3,"], SamplingParams(temperature=0, max_tokens=20, stop=["5"]))[0]
    assert c.choices[0].finish_reason == "stop" and c.text == full.text[:cut]


def test_logit_bias_forces_a_token(smol_engine):
    tok = smol_engine.encode(" banana")[0]
    c = smol_engine.generate(["Hi"], SamplingParams(temperature=0, max_tokens=3, logit_bias={tok: 100}))[0]
    assert c.choices[0].token_ids == [tok] * 3


def test_stream_yields_deltas_then_usage(smol_engine):
    async def run():
        return [d async for d in smol_engine.stream("The capital of France is", GREEDY)]

    deltas = asyncio.run(run())
    whole = smol_engine.generate(["The capital of France is"], GREEDY)[0]
    assert "".join(d.text for d in deltas) == whole.text
    assert deltas[-1].finish_reason == whole.choices[0].finish_reason and deltas[-1].usage == whole.usage
    assert all(d.usage is None for d in deltas[:-1])


def test_stream_leaves_the_event_loop_free(smol_engine):
    """Other coroutines keep running while a stream waits for tokens (the engine works in its thread)."""
    ticks = []

    async def ticker(stop):
        while not stop.is_set():
            ticks.append(1)
            await asyncio.sleep(0)

    async def run():
        stop = asyncio.Event()
        t = asyncio.create_task(ticker(stop))
        n = 0
        async for _ in smol_engine.stream("Hello", SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)):
            n += 1
        stop.set()
        await t
        return n

    assert asyncio.run(run()) >= 1 and len(ticks) > 8


def test_abort_frees_the_slot_at_once(smollm2_dir):
    from ember.engine.engine import Engine

    engine = Engine.load(smollm2_dir, max_slots=1, max_seq_len=512)
    try:
        started, finished = threading.Event(), []
        rid = engine.add_request("Tell me a long story.",
                                 SamplingParams(temperature=0, max_tokens=400, ignore_eos=True),
                                 lambda d: (started.set(), d.finish_reason and finished.append(d.finish_reason)))
        started.wait()
        engine.abort(rid, wait=True)
        assert finished == ["abort"] and engine.num_running == 0 and engine.cache_usage == 0
        c = engine.generate(["Hi"], SamplingParams(temperature=0, max_tokens=4))[0]
        assert len(c.choices[0].token_ids) >= 1
    finally:
        engine.close()


def test_chat_prompt_uses_the_template(smol_engine):
    ids = smol_engine.chat_prompt([{"role": "user", "content": "Hello"}])
    text = smol_engine.tokenizer.decode(ids)
    assert "<|im_start|>user\nHello<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")


def test_invalid_requests(smol_engine):
    with pytest.raises(InvalidRequest):
        SamplingParams(temperature=-1)
    with pytest.raises(InvalidRequest):
        smol_engine.generate(["x"], SamplingParams(max_tokens=5000))


def test_int8_same_seed_same_output_alone_or_in_a_batch_over_the_one_call_size(smollm2_dir):
    """int8 decode steps of up to 8 rows run in one native call, larger or mixed steps layer by layer: a seeded
    request gives the same text either way (models/native_decode.py)."""
    from ember.engine.engine import Engine

    engine = Engine.load(smollm2_dir, max_slots=16, max_seq_len=512, quantize="int8")
    try:
        assert engine.model.native is not None
        alone, batched = _seeded_alone_and_batched(engine, 11)  # 12 rows: over the one-call step's 8
        assert batched == alone
    finally:
        engine.close()
