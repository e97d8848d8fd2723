"""Ember's decoders give transformers' logits on the same weights (tiny random models, fast).

    .venv/bin/python -m pytest tests/models -q
"""

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from ember.errors import NotFound, Unsupported
from ember.models.attention import make_batch
from ember.models.loading import load_model


def _save(model, path):
    model.save_pretrained(path)  # safetensors by default
    return path


def _randomize(model):
    """transformers initialises biases to 0 and norm weights to 1, which would let a decoder that ignores
    them pass; give every one of them random values."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.5)
            elif "norm" in name or ".ln_" in name:
                p.normal_(mean=1.0, std=0.2)
    return model


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False)
    m = _randomize(LlamaForCausalLM(cfg).eval())
    return m, _save(m, tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=300, n_embd=64, n_layer=3, n_head=4, n_positions=128)
    m = _randomize(GPT2LMHeadModel(cfg).eval())
    return m, _save(m, tmp_path_factory.mktemp("gpt2"))


def _check_chunked_and_batched(hf, folder):
    """Prefill in uneven chunks on two slots, then decode both rows in one step next to a prefill."""
    em = load_model(folder).model
    cache = em.make_cache(4, 64)
    # The cache comes from torch.empty and may hold anything, NaN included, where no sequence wrote yet.
    cache.k.fill_(float("nan"))
    cache.v.fill_(float("nan"))
    a, b = list(range(5, 25)), list(range(40, 47))
    with torch.inference_mode():
        ref_a = hf(torch.tensor([a + [7]])).logits[0]
        ref_b = hf(torch.tensor([b + [9]])).logits[0]
        em.forward(make_batch([], [(2, 0, a[:8])], [False]), cache)
        out = em.forward(make_batch([], [(2, 8, a[8:]), (0, 0, b)], [True, True]), cache)
        torch.testing.assert_close(out[0], ref_a[len(a) - 1], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out[1], ref_b[len(b) - 1], atol=1e-4, rtol=1e-4)
        # Decode rows on non-contiguous slots (0 and 2) plus a fresh prefill on slot 1 in the same step.
        out = em.forward(make_batch([(2, len(a), 7), (0, len(b), 9)], [(1, 0, [3, 4, 5])], [True]), cache)
        torch.testing.assert_close(out[0], ref_a[-1], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out[1], ref_b[-1], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out[2], hf(torch.tensor([[3, 4, 5]])).logits[0, -1], atol=1e-4, rtol=1e-4)


def test_llama_logits_match_transformers(tiny_llama):
    _check_chunked_and_batched(*tiny_llama)


def test_tied_llama_logits_match_transformers(tmp_path):
    """Tied embeddings (SmolLM2's layout): the packed LM head and the file-mapped embedding lookup; with a
    q/k/v bias, which the packed projection fuses."""
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, attention_bias=True)
    m = _randomize(LlamaForCausalLM(cfg).eval())
    _check_chunked_and_batched(m, _save(m, tmp_path))


def test_gpt2_logits_match_transformers(tiny_gpt2):
    _check_chunked_and_batched(*tiny_gpt2)


def test_llama3_rope_scaling(tmp_path):
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                      rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 64})
    hf = LlamaForCausalLM(cfg).eval()
    em = load_model(_save(hf, tmp_path)).model
    ids = list(range(1, 90))
    with torch.inference_mode():
        ref = hf(torch.tensor([ids])).logits[0, -1]
        out = em.forward(make_batch([], [(0, 0, ids)], [True]), em.make_cache(1, 128))[0]
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_gpt2_engine_greedy_matches_generate(tiny_gpt2):
    from ember.engine.engine import Engine
    from ember.engine.sampling import SamplingParams

    hf, folder = tiny_gpt2
    engine = Engine.load(folder, max_slots=4, max_seq_len=128)
    prompts = [[1, 2, 3], [50, 60, 70, 80, 90], [7]]
    try:
        outs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))
    finally:
        engine.close()
    for p, o in zip(prompts, outs):
        ref = hf.generate(torch.tensor([p]), do_sample=False, max_new_tokens=20, min_new_tokens=20,
                          pad_token_id=0)[0, len(p):].tolist()
        assert o.choices[0].token_ids == ref


def test_unknown_architecture_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba", "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(Unsupported):
        load_model(tmp_path)


def test_pickled_weights_are_refused(pickle_only_dir):
    with pytest.raises(Unsupported):
        load_model(pickle_only_dir)


def test_missing_folder_or_config(tmp_path):
    with pytest.raises(NotFound):
        load_model(tmp_path)


def test_llama_decode_only_steps_match_transformers(tmp_path):
    """The decode-only fast path (no prefill in the step: no output buffer, no length mask when every row
    has the same length) and the attention scale folded into the q weights (head_dim 16: scale 1/4,
    exact) give transformers' logits, one row alone and rows of equal and unequal lengths."""
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    hf = _randomize(LlamaForCausalLM(cfg).eval())
    em = load_model(_save(hf, tmp_path)).model
    assert em.attn_scale == 1.0  # folded
    cache = em.make_cache(3, 64)
    cache.k.fill_(float("nan"))
    cache.v.fill_(float("nan"))
    seqs = [list(range(5, 15)), list(range(50, 60)), list(range(90, 96))]
    with torch.inference_mode():
        em.forward(make_batch([], [(s, 0, seq) for s, seq in enumerate(seqs)], [False] * 3), cache)
        for step in range(3):
            rows = 1 if step == 0 else 3  # one stream alone, then equal (slots 0, 1) and unequal lengths
            dec = [(s, len(seqs[s]), 7 + step + s) for s in range(rows)]
            out = em.forward(make_batch(dec, [], []), cache)
            for s, (_, _, tok) in enumerate(dec):
                seqs[s].append(tok)
                ref = hf(torch.tensor([seqs[s]])).logits[0, -1]
                torch.testing.assert_close(out[s], ref, atol=1e-4, rtol=1e-4)
