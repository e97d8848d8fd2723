"""Many LoRA adapters on one base engine, unmerged: a mixed batch where each row uses its own adapter (or
none) gives each request exactly the greedy output of its merged model.

    .venv/bin/python -m pytest tests/engine/test_lora_multi.py -q
"""

import pytest
import torch

from ember.engine.engine import Engine
from ember.engine.sampling import SamplingParams
from ember.store.adapters import merge_into

PROMPTS = [[5, 17, 99, 3], [7, 7, 7], [100, 200, 300, 400, 500], [42]]


def _peft_adapter(base_dir, out, targets, seed):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    get_peft_model(model, cfg).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def adapters(tiny_chat_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora")
    a = _peft_adapter(tiny_chat_dir, tmp / "a", ["q_proj", "v_proj", "o_proj"], 1)
    b = _peft_adapter(tiny_chat_dir, tmp / "b", ["q_proj", "k_proj", "gate_proj", "up_proj", "down_proj"], 2)
    return {"a": a, "b": b, "merged-a": merge_into(tiny_chat_dir, a, tmp / "merged-a"),
            "merged-b": merge_into(tiny_chat_dir, b, tmp / "merged-b")}


def _greedy(engine, prompts, adapters=None):
    p = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    return [c.choices[0].token_ids for c in engine.generate(prompts, p, adapters=adapters)]


def test_mixed_batch_equals_merged_models(tiny_chat_dir, adapters):
    base = Engine.load(tiny_chat_dir, max_slots=16, max_seq_len=64, max_adapters=2)
    want = {None: _greedy(base, PROMPTS)}
    for name in ("a", "b"):
        merged = Engine.load(adapters[f"merged-{name}"], max_slots=4, max_seq_len=64)
        want[name] = _greedy(merged, PROMPTS)
        merged.close()
    assert want["a"] != want[None] and want["b"] != want[None]  # the adapters change the outputs

    # One batch: every prompt three times, with adapter a, adapter b, and none, interleaved.
    prompts, which = [], []
    for i, p in enumerate(PROMPTS):
        for name in ("a", "b", None)[i % 3:] + ("a", "b", None)[: i % 3]:
            prompts.append(p)
            which.append(name)
    got = _greedy(base, prompts, [str(adapters[w]) if w else None for w in which])
    for p, w, toks in zip(prompts, which, got):
        assert toks == want[w][PROMPTS.index(p)], (w, p)
    stats = base.adapters.stats()
    assert stats["misses"] == 2 and stats["hits"] >= 6 and len(stats["loaded"]) == 2
    files = sum((adapters[n] / "adapter_model.safetensors").stat().st_size for n in ("a", "b"))
    assert stats["bytes"] < 3 * files  # an adapter costs its own weights, not a copy of the base
    base.close()


def test_lru_evicts_idle_adapter(tiny_chat_dir, adapters):
    base = Engine.load(tiny_chat_dir, max_slots=4, max_seq_len=64, max_adapters=1)
    first = _greedy(base, PROMPTS[:1], [str(adapters["a"])])
    _greedy(base, PROMPTS[:1], [str(adapters["b"])])  # a is idle: evicted for b
    assert base.adapters.evictions == 1 and base.adapters.stats()["loaded"] == [str(adapters["b"])]
    assert _greedy(base, PROMPTS[:1], [str(adapters["a"])]) == first  # loaded again, same output
    base.close()
