"""The int8 decoder's one-call decode step: the same bits as the layer-by-layer path, alone or batched.

    .venv/bin/python -m pytest tests/models/test_native_decode.py -q
"""

import pytest
import torch

from ember.models import cpu_kernels


@pytest.fixture(scope="module")
def int8_decoder(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from ember.models.loading import load_model

    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(folder)
    model = load_model(folder, quantize="int8").model
    assert model.native is not None  # a compiler is present here, so the kernels are built
    return model


def _run(model, prompts: dict[int, list[int]], steps: int, batched: bool) -> dict[int, torch.Tensor]:
    """Prefill each slot's prompt, then decode `steps` tokens per slot: all slots in one step, or one at a time."""
    from ember.models.attention import make_batch

    cache = model.make_cache(max(prompts) + 1, 64)
    logits = {s: [] for s in prompts}
    with torch.inference_mode():
        for s, ids in prompts.items():
            model.forward(make_batch([], [(s, 0, ids)], [True]), cache)
        for t in range(steps):
            rows = [(s, len(ids) + t, (s * 7 + t) % 250 + 3) for s, ids in prompts.items()]
            groups = [rows] if batched else [[r] for r in rows]
            for g in groups:
                out = model.forward(make_batch(g, [], []), cache)
                for (s, _, _), row in zip(g, out):
                    logits[s].append(row)
    return {s: torch.stack(v) for s, v in logits.items()}


def test_one_call_decode_equals_the_layer_by_layer_path_bit_for_bit(int8_decoder, monkeypatch):
    prompts = {0: list(range(3, 20)), 2: list(range(40, 45)), 5: list(range(100, 131))}  # slots, lengths differ
    native = _run(int8_decoder, prompts, 4, batched=True)
    monkeypatch.setattr(cpu_kernels, "max_rows", lambda: 0)  # every step through the layer loop (torch int8 GEMMs)
    loop = _run(int8_decoder, prompts, 4, batched=True)
    for s in prompts:
        assert torch.equal(native[s], loop[s]), s


def test_a_row_gets_the_same_logits_alone_or_in_a_batch_of_any_size(int8_decoder):
    prompts = {s: list(range(3 + s, 12 + 2 * s)) for s in range(10)}  # 10 rows: over the kernel's 8, the loop
    batched = _run(int8_decoder, prompts, 3, batched=True)
    alone = _run(int8_decoder, prompts, 3, batched=False)  # one row a step: the one-call path
    for s in prompts:
        assert torch.equal(batched[s], alone[s]), s
