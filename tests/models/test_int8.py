"""The optional int8 path: a quantized decoder stays close to fp32 (the bench measures perplexity on SmolLM2).

    .venv/bin/python -m pytest tests/models/test_int8.py -q
"""

import pytest
import torch


@pytest.mark.parametrize("tied", [False, True])
def test_int8_weights_stay_close(tmp_path, tied):
    from transformers import LlamaConfig, LlamaForCausalLM

    from ember.models.attention import make_batch
    from ember.models.loading import load_model

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      tie_word_embeddings=tied, attention_bias=tied)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("_proj.bias"):
                p.normal_(std=0.5)  # zero by default, which would not show a lost bias
    hf.save_pretrained(tmp_path)
    m, m8 = load_model(tmp_path).model, load_model(tmp_path, quantize="int8").model
    ids = list(range(3, 60))
    with torch.inference_mode():
        ref = m.forward(make_batch([], [(0, 0, ids)], [True]), m.make_cache(1, 64))
        q = m8.forward(make_batch([], [(0, 0, ids)], [True]), m8.make_cache(1, 64))
    assert torch.nn.functional.cosine_similarity(q, ref).item() > 0.99
