"""LoRA adapters served unmerged by their base's engine: requests name the adapter like any model, a mixed
batch of two adapters and the base gives each request its merged model's greedy output.

    .venv/bin/python -m pytest tests/server/test_lora_serving.py -q
"""

import threading

import httpx
import pytest
from openai import OpenAI

from ember.config import Settings
from ember.engine.engine import Engine
from ember.engine.sampling import SamplingParams
from ember.store import registry
from ember.store.adapters import merge_into

PROMPTS = [[5, 17, 99, 3], [7, 7, 7], [100, 200, 300, 400, 500]]


def _peft_adapter(base_dir, out, targets, seed):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)) \
        .save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def lora_home(tmp_path_factory, tiny_chat_dir):
    home = tmp_path_factory.mktemp("lora-home")
    tmp = tmp_path_factory.mktemp("lora-adapters")
    settings = Settings(home=home)
    registry.register_folder(tiny_chat_dir, "tb", settings=settings)
    want = {}
    p = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    base = Engine.load(tiny_chat_dir, max_slots=4, max_seq_len=64)
    want["tb"] = [c.choices[0].token_ids for c in base.generate(PROMPTS, p)]
    base.close()
    for name, targets, seed in (("ad-a", ["q_proj", "v_proj", "o_proj"], 1),
                                ("ad-b", ["k_proj", "gate_proj", "down_proj"], 2)):
        folder = _peft_adapter(tiny_chat_dir, tmp / name, targets, seed)
        registry.register_folder(folder, name, kind="adapter", parent="tb:1", settings=settings)
        merged = Engine.load(merge_into(tiny_chat_dir, folder, tmp / f"{name}-merged"), max_slots=4, max_seq_len=64)
        want[name] = [c.choices[0].token_ids for c in merged.generate(PROMPTS, p)]
        merged.close()
    return home, want


def test_adapters_and_base_in_one_batch(start_server, lora_home):
    home, want = lora_home
    server = start_server(home, "--model", "tb", "--max-adapters", 2, "--max-slots", 16, "--max-seq-len", 64)
    cards = {m.id: m for m in OpenAI(base_url=server.v1, api_key="x").models.list().data}
    assert cards["ad-a"].root == "ad-a:1" and cards["ad-a"].parent == "tb"
    assert cards["ad-b"].parent == "tb" and cards["tb"].parent is None

    results, errors = {}, []
    barrier = threading.Barrier(9)

    def ask(model, i):
        try:
            barrier.wait(60)
            r = httpx.post(server.v1 + "/completions", timeout=120, json={
                "model": model, "prompt": PROMPTS[i], "max_tokens": 6, "temperature": 0, "ignore_eos": True,
                "logprobs": 0})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model"] == model
            results[(model, i)] = (r.headers["x-ember-model-version"],
                                   body["choices"][0]["logprobs"]["tokens"])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(m, i)) for m in ("ad-a", "ad-b", "tb") for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    tok = {}
    for (model, i), (version, tokens) in results.items():
        assert version == {"ad-a": "ad-a:1", "ad-b": "ad-b:1", "tb": "tb:1"}[model]
        tok[(model, i)] = tokens
    # Each answer's tokens (as the server renders them) are its merged model's greedy ids.
    from transformers import AutoTokenizer

    from ember.store.registry import materialize
    tokenizer = AutoTokenizer.from_pretrained(str(materialize("tb", Settings(home=home))))
    for model in ("ad-a", "ad-b", "tb"):
        for i in range(3):
            want_toks = [tokenizer.decode([t], skip_special_tokens=False) for t in want[model][i]]
            assert tok[(model, i)] == want_toks, (model, i)
    assert server.metric("ember:adapter_cache_misses_total", model_name="tb") == 2
    assert server.metric("ember:adapter_cache_hits_total", model_name="tb") >= 4
