"""Scoring: prompt logprobs through the step loop equal transformers' log-softmax, chunked or not, batched
with generation or alone; max_tokens=0 generates nothing.

    .venv/bin/python -m pytest tests/engine/test_score.py -q
"""

import pytest
import torch

from ember.engine.sampling import SamplingParams
from ember.errors import InvalidRequest


def _hf_logprobs(hf, ids: list[int]) -> torch.Tensor:
    """[len(ids) - 1] log p(ids[i] | ids[:i]) for i >= 1, from transformers in fp32."""
    with torch.inference_mode():
        logits = hf(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


def test_prompt_logprobs_equal_transformers(smol_engine, smol_hf):
    texts = ["The capital of France is Paris.", "def add(a, b):\n    return a + b"]
    scored = smol_engine.score(texts, k=3)
    for text, lps in zip(texts, scored):
        ids = smol_engine.encode(text)
        assert len(lps) == len(ids) and lps[0] is None
        assert [lp["token_id"] for lp in lps[1:]] == ids[1:]
        ours = torch.tensor([lp["logprob"] for lp in lps[1:]])
        assert torch.allclose(ours, _hf_logprobs(smol_hf, ids), atol=1e-4)
        assert all(len(lp["top"]) == 3 and lp["top"][0][1] >= lp["logprob"] - 1e-6 for lp in lps[1:])


def test_max_tokens_zero_generates_nothing_and_echo_scoring_generates_after(smol_engine):
    ids = smol_engine.encode("One, two, three,")
    only = smol_engine.generate([ids], SamplingParams(max_tokens=0, prompt_logprobs=0))[0]
    assert only.choices[0].token_ids == [] and only.choices[0].finish_reason == "length"
    assert only.usage.completion_tokens == 0 and len(only.prompt_logprobs) == len(ids)
    both = smol_engine.generate([ids], SamplingParams(temperature=0, max_tokens=4, prompt_logprobs=1, logprobs=1))[0]
    plain = smol_engine.generate([ids], SamplingParams(temperature=0, max_tokens=4))[0]
    assert both.choices[0].token_ids == plain.choices[0].token_ids
    assert [lp and lp["logprob"] for lp in both.prompt_logprobs] == pytest.approx(
        [lp and lp["logprob"] for lp in only.prompt_logprobs], abs=1e-4)
    assert len(both.choices[0].logprobs) == 4


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """The tiny random Llama with a 7-token prefill budget, so a 40-token prompt takes six chunks."""
    from transformers import AutoModelForCausalLM

    from ember.engine.engine import Engine

    engine = Engine.load(tiny_model_dir, max_slots=4, max_seq_len=64, step_tokens=7)
    yield engine, AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    engine.close()


def test_chunked_scoring_batched_with_generation_equals_transformers(tiny):
    engine, hf = tiny
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 128, (n,), generator=g).tolist() for n in (40, 23, 65)]
    gen_prompt = torch.randint(0, 128, (12,), generator=g).tolist()
    alone = engine.generate([gen_prompt], SamplingParams(temperature=0, max_tokens=10))[0].choices[0].token_ids
    score = SamplingParams(max_tokens=0, prompt_logprobs=2)
    out = engine.generate([*prompts, gen_prompt], [score, score, score,
                                                   SamplingParams(temperature=0, max_tokens=10)])
    assert out[3].choices[0].token_ids == alone  # scoring in the same steps does not disturb generation
    for ids, comp in zip(prompts, out):  # 65 tokens: scoring never feeds the last one, so it fits 64 positions
        ours = torch.tensor([lp["logprob"] for lp in comp.prompt_logprobs[1:]])
        assert torch.allclose(ours, _hf_logprobs(hf, ids), atol=1e-4)


def test_scoring_reuses_no_cached_prefix_but_computes_every_position(tiny):
    engine, hf = tiny
    ids = list(range(3, 43))
    engine.generate([ids], SamplingParams(temperature=0, max_tokens=2))  # leaves the prompt's K/V in a slot
    lps = engine.score([ids + [5, 6]])[0]
    assert len(lps) == 42
    ours = torch.tensor([lp["logprob"] for lp in lps[1:]])
    assert torch.allclose(ours, _hf_logprobs(hf, ids + [5, 6]), atol=1e-4)


def test_scoring_refusals(tiny):
    engine, _ = tiny
    with pytest.raises(InvalidRequest):
        engine.generate([list(range(66))], SamplingParams(max_tokens=0, prompt_logprobs=0))  # over the context
    with pytest.raises(InvalidRequest):
        engine.generate([list(range(64))], SamplingParams(max_tokens=1))  # no room to generate
    with pytest.raises(InvalidRequest):
        SamplingParams(num_beams=2, prompt_logprobs=1)
