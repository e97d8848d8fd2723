"""Prompt scoring over the API: echo + logprobs, max_tokens 0, vLLM's prompt_logprobs and /tokenizer_info,
through the official openai client and raw HTTP against one real `ember serve` (SmolLM2, fp32).

    .venv/bin/python -m pytest tests/server/test_server_scoring.py -q
"""

import httpx
import openai
import pytest
import torch

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def served(start_server, catalog_home, smollm2_dir):
    return start_server(catalog_home, "--model", MODEL, "--max-slots", 8)


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.v1, api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def hf(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(smollm2_dir))


def _hf_logprobs(model, ids: list[int]) -> list[float]:
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()


def test_echo_with_logprobs_returns_the_prompt_logprobs_of_transformers(client, hf):
    model, tok = hf
    ctx = tok("Question: What is the capital of France?\nAnswer:", add_special_tokens=False).input_ids
    cont = tok(" Paris", add_special_tokens=False).input_ids
    ids = ctx + cont
    # lm-evaluation-harness's local-completions loglikelihood request, exactly.
    r = client.completions.create(model=MODEL, prompt=ids, max_tokens=1, logprobs=1, echo=True, temperature=0,
                                  seed=1234)
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) == len(ids) + 1  # the prompt's tokens, then the generated one
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.tokens[: len(ids)] == [tok.decode([t]) for t in ids]
    assert r.choices[0].text.startswith(tok.decode(ids))
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    ref = _hf_logprobs(model, ids)
    assert lp.token_logprobs[1: len(ids)] == pytest.approx(ref, abs=1e-4)
    # What lm-eval sums for the continuation: token_logprobs[ctxlen:-1].
    assert sum(lp.token_logprobs[len(ctx):-1]) == pytest.approx(sum(ref[len(ctx) - 1:]), abs=1e-4)
    assert all(len(top) >= 1 for top in lp.top_logprobs[1:])
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 1


def test_max_tokens_zero_with_echo_scores_only(client, served, hf):
    model, tok = hf
    text = "The quick brown fox jumps over the lazy dog."
    r = client.completions.create(model=MODEL, prompt=text, max_tokens=0, echo=True, logprobs=2)
    c = r.choices[0]
    ids = tok(text).input_ids
    assert c.text == text and r.usage.completion_tokens == 0 and c.finish_reason == "length"
    assert c.logprobs.token_logprobs[1:] == pytest.approx(_hf_logprobs(model, ids), abs=1e-4)
    assert all(len(t) in (2, 3) for t in c.logprobs.top_logprobs[1:])  # top 2, plus the token itself
    bad = httpx.post(served.v1 + "/completions", json={"model": MODEL, "prompt": text, "max_tokens": 0}, timeout=60)
    assert bad.status_code == 400 and "max_tokens" in bad.json()["error"]["message"]
    # Streamed: the first chunk echoes the prompt with its logprobs.
    chunks = list(client.completions.create(model=MODEL, prompt=text, max_tokens=2, echo=True, logprobs=0,
                                            temperature=0, stream=True))
    first = chunks[0].choices[0]
    assert first.text.startswith(text) and first.logprobs.token_logprobs[0] is None
    assert sum(len(ch.choices[0].logprobs.tokens) for ch in chunks if ch.choices and ch.choices[0].logprobs) == \
        len(ids) + 2


def test_prompt_logprobs_extra_on_completions_and_chat(client, hf):
    model, tok = hf
    r = client.completions.create(model=MODEL, prompt="Hello there, my friend", max_tokens=1, temperature=0,
                                  extra_body={"prompt_logprobs": 1})
    plp = r.choices[0].model_extra["prompt_logprobs"]
    ids = tok("Hello there, my friend").input_ids
    assert plp[0] is None and len(plp) == len(ids)
    ref = _hf_logprobs(model, ids)
    for i, entry in enumerate(plp[1:]):
        mine = entry[str(ids[i + 1])]
        assert mine["logprob"] == pytest.approx(ref[i], abs=1e-4) and mine["rank"] >= 1
        assert mine["decoded_token"] == tok.decode([ids[i + 1]])
        assert any(v["rank"] == 1 for v in entry.values())
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=1,
                                          temperature=0, extra_body={"prompt_logprobs": 0})
    cplp = chat.model_extra["prompt_logprobs"]
    assert cplp[0] is None and len(cplp) == chat.usage.prompt_tokens


def test_tokenizer_info_in_vllms_shape(served, hf):
    _, tok = hf
    info = httpx.get(served.url + "/tokenizer_info", timeout=60).json()
    assert info["eos_token"] == tok.eos_token and info["bos_token"] == tok.bos_token
    assert info["chat_template"] and info["tokenizer_class"] and info["model_max_length"] > 0
    assert not any(isinstance(v, str) and v.startswith("/") for v in info.values())  # no server paths
