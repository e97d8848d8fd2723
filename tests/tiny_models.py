"""Tiny random Llama chat models with SmolLM2's tokenizer and template, for tests that need a real but fast
decoder (tests/conftest.py's `tiny_chat_dir`, tests/deploy/conftest.py's replica cluster)."""

import shutil
from pathlib import Path


def save_tiny_chat_llama(tokenizer_dir: Path, out: Path, max_positions: int = 512) -> Path:
    """A 2-layer, 16-wide Llama with the full 49152-token vocabulary, saved to `out` with the tokenizer files
    of `tokenizer_dir` (a SmolLM2 folder)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=max_positions,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, out / name)
    return out
