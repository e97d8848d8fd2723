"""Fixtures for the evaluation tests.

- `tiny_folder`: a tiny random Llama (2 layers, hidden 16) with SmolLM2's tokenizer and chat template, saved as a
  plain HF folder once per session; registered into a fresh `ember_home` by `tiny_model` it makes generation
  and perplexity runs take a second instead of a minute, through the real engine and registry.
"""

import shutil

import pytest


@pytest.fixture(scope="session")
def tiny_folder(smollm2_dir, tmp_path_factory):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (smollm2_dir / name).exists():
            shutil.copy(smollm2_dir / name, out / name)
    return out


@pytest.fixture
def tiny_model(ember_home, tiny_folder):
    """Two versions of `tiny` (the same weights) in a fresh EMBER_HOME; returns the name."""
    from ember.store import registry

    registry.register_folder(tiny_folder, "tiny")
    registry.register_folder(tiny_folder, "tiny")
    return "tiny"
