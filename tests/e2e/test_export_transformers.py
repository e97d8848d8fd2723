"""The acceptance path of the registry: pull the bundled SmolLM2, export it, use it with plain transformers."""

import subprocess

import pytest


@pytest.fixture(scope="module")
def exported(catalog_home, tmp_path_factory, ember_bin):
    import os

    out = tmp_path_factory.mktemp("export") / "smollm2"
    env = {**os.environ, "EMBER_HOME": str(catalog_home)}
    subprocess.run([ember_bin, "models", "export", "smollm2-135m-instruct", str(out)], env=env, check=True)
    return out


def test_classic_transformers_example_runs_unchanged(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(exported)
    tokenizer = AutoTokenizer.from_pretrained(exported)
    input_ids = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
    out = model.generate(input_ids, max_length=50)
    assert out.shape[1] > input_ids.shape[1]
    assert tokenizer.decode(out[0], skip_special_tokens=True).startswith("The quick brown fox")


def test_exported_model_answers_the_capital_of_france(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(exported)
    tok = AutoTokenizer.from_pretrained(exported)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    answer = tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_export_refuses_a_non_empty_destination(run_cli, catalog_home, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    r = run_cli("models", "export", "smollm2-135m-instruct", tmp_path, env={"EMBER_HOME": str(catalog_home)})
    assert r.returncode == 2 and "not an empty folder" in r.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"
