"""LoRA SFT end to end: a reply format the base model does not follow is learned (exact match on held-out
prompts rises from ~0 to >= 0.8); the adapter is a registry version of kind `adapter` with lineage; the
merged model's greedy output equals base + adapter's; the engine serves the adapter (merged at load).

The run is trained once per module through the real CLI (`ember finetune sft`), kept small for CPU:
40 examples, 8 steps of 4, rank 8, lr 3e-3 (the training loss is ~0.03 by step 5). Replies are ~11 tokens,
so generation stops at 14 new tokens. The timeout is generous because the session fixture converts the
GGUF catalog model first and the shared CPUs are often busy; the work itself takes ~1-2 minutes.
"""

import json
import os

import pytest
import torch
from ft_synth import item_task, write_jsonl

BASE = "smollm2-135m-instruct"
N_HELD = 8
pytestmark = pytest.mark.timeout(2400)


def _greedy(model, tokenizer, records, max_new_tokens=14) -> list[list[int]]:
    tokenizer.padding_side = "left"
    prompts = [tokenizer.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True)
               for r in records]
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return [[t for t in row.tolist() if t != tokenizer.pad_token_id] for row in out[:, enc["input_ids"].shape[1]:]]


def _exact_match(tokenizer, outputs, records) -> float:
    texts = tokenizer.batch_decode(outputs, skip_special_tokens=True)
    return sum(t.strip() == r["messages"][-1]["content"] for t, r in zip(texts, records)) / len(records)


@pytest.fixture(scope="module")
def held():
    return item_task(N_HELD, seed=7, held_out=True)


@pytest.fixture(scope="module")
def adapter(ft_home, tmp_path_factory, held):
    """Train once: returns the CLI's JSON summary."""
    import subprocess
    import sys
    from pathlib import Path

    d = tmp_path_factory.mktemp("sft-data")
    train = write_jsonl(d / "train.jsonl", item_task(40, seed=1))
    val = write_jsonl(d / "val.jsonl", item_task(4, seed=2))
    ember = str(Path(sys.executable).with_name("ember"))
    env = {**os.environ, "EMBER_HOME": str(ft_home)}
    env.pop("EMBER_DATABASE_URL", None)
    proc = subprocess.run([ember, "finetune", "sft", "--base", BASE, "--data", train, "--eval-data", val,
                           "--name", "item-format", "--method", "lora", "--rank", "8", "--alpha", "16",
                           "--dropout", "0", "--lr", "3e-3", "--batch-size", "4", "--max-steps", "8",
                           "--max-length", "64", "--no-progress", "--json"],
                          capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    summary["data"] = {"train": train, "val": val}
    return summary


def test_lora_sft_learns_the_format(adapter, held, use_ft_home):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ember.store import adapters, registry

    base_dir = registry.materialize(BASE)
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    before = _exact_match(tok, _greedy(base, tok, held), held)

    adapter_dir = registry.materialize(adapter["ref"])
    tuned = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    with_adapter = _greedy(tuned, tok, held)
    after = _exact_match(tok, with_adapter, held)
    print(f"\nexact match on {len(held)} held-out prompts: before {before:.2f}, after {after:.2f}")
    assert before <= 0.2
    assert after >= 0.8

    # Merged weights (what `ember serve --model ADAPTER` loads) give the same greedy tokens.
    merged = AutoModelForCausalLM.from_pretrained(str(adapters.merged_folder(adapter["ref"])))
    assert _greedy(merged, tok, held) == with_adapter


def test_adapter_version_and_lineage(adapter, use_ft_home):
    from ember.store import registry

    v = registry.resolve(adapter["ref"])
    base = registry.resolve(BASE)
    assert v.kind == "adapter" and v.parent == base.ref
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(v.files)
    conf = json.loads((registry.materialize(v) / "adapter_config.json").read_text())
    assert conf["peft_type"] == "LORA" and conf["r"] == 8 and conf["base_model_name_or_path"] == base.ref
    lin = v.metadata["lineage"]
    assert lin["base"] == base.ref and lin["task"] == "sft" and lin["method"] == "lora"
    assert set(lin["data_digests"]) == {"train", "eval"}
    assert all(len(d) == 64 for d in lin["data_digests"].values())
    assert lin["config"]["rank"] == 8 and lin["config"]["lr"] == 3e-3
    assert lin["final_eval_loss"] is not None and lin["final_eval_loss"] < 1.0


def test_merge_cli_makes_a_model_version(adapter, use_ft_home, run_cli):
    from ember.store import registry

    proc = run_cli("models", "merge", adapter["ref"], "--name", "item-format-merged", "--json")
    assert proc.returncode == 0, proc.stderr
    v = registry.resolve(json.loads(proc.stdout)["ref"])
    assert v.kind == "model" and v.parent == adapter["ref"]
    assert v.lineage[:2] == [adapter["ref"], registry.resolve(BASE).ref]
    assert v.metadata["lineage"]["merged_from"] == adapter["ref"]
    assert "model.safetensors" in v.files and "tokenizer.json" in v.files

    bad = run_cli("models", "merge", BASE, "--name", "nope")
    assert bad.returncode == 2 and "not an adapter" in bad.stderr


def test_engine_serves_the_adapter_next_to_the_base(adapter, held, use_ft_home):
    """Through Ember's own engine: the adapter (merged at load) follows the format, the base does not."""
    from ember.engine.engine import Engine
    from ember.engine.sampling import SamplingParams
    from ember.store.adapters import merged_folder

    params = SamplingParams(max_tokens=14, temperature=0.0)
    tuned = Engine.load(merged_folder(adapter["ref"]))
    base = Engine.load(merged_folder(BASE))
    try:
        prompts = [tuned.chat_prompt(r["messages"][:-1]) for r in held]
        want = [r["messages"][-1]["content"] for r in held]
        got = [c.text.strip() for c in tuned.generate(prompts, params)]
        assert sum(g == w for g, w in zip(got, want)) / len(held) >= 0.8
        base_got = [c.text.strip() for c in base.generate(prompts, params)]
        assert sum(g == w for g, w in zip(base_got, want)) / len(held) <= 0.2
    finally:
        tuned.close()
        base.close()


def test_openai_api_serves_the_adapter_under_its_own_name(adapter, held, ft_home, start_server):
    """A real `ember serve --model BASE --model ADAPTER` on 127.0.0.1, asked through the official openai client:
    the adapter answers in the trained format under its own name, the base model answers as before."""
    from openai import OpenAI

    served = start_server(ft_home, "--model", BASE, "--model", adapter["ref"], "--max-slots", 8)
    client = OpenAI(base_url=served.v1, api_key="unused", max_retries=0)
    assert {BASE, adapter["ref"]} <= {m.id for m in client.models.list().data}
    hits = {BASE: 0, adapter["ref"]: 0}
    for rec in held:
        for model in hits:
            reply = client.chat.completions.create(model=model, messages=rec["messages"][:-1], max_tokens=14,
                                                   temperature=0)
            assert reply.model == model
            hits[model] += reply.choices[0].message.content.strip() == rec["messages"][-1]["content"]
    assert hits[adapter["ref"]] / len(held) >= 0.8
    assert hits[BASE] / len(held) <= 0.2
