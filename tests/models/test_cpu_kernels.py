"""The C kernels for few-row steps: the same bits as the torch path, built once, and optional.

    .venv/bin/python -m pytest tests/models/test_cpu_kernels.py -q
"""

import pytest
import torch

from ember.models import cpu_kernels
from ember.models.int8 import Int8Linear


@pytest.fixture
def fresh_library(monkeypatch, ember_home):
    cpu_kernels.library.cache_clear()
    cpu_kernels.max_rows.cache_clear()
    yield
    cpu_kernels.library.cache_clear()
    cpu_kernels.max_rows.cache_clear()


@pytest.mark.parametrize("k", [64, 100, 576])
def test_int8_kernel_gives_the_torch_paths_bits_for_one_to_eight_rows(fresh_library, k):
    assert cpu_kernels.max_rows() == 8  # a compiler is present here, so the kernels are built
    torch.manual_seed(k)
    w = Int8Linear(torch.randn(k, 96) * 0.05)
    for m in range(1, 9):
        x = torch.randn(m, k) * torch.rand(m, 1) * 4  # rows of different scales
        x[0, 0] = 0.0 if m > 1 else x[0, 0]
        assert torch.equal(x @ w, w.through_torch(x)), m
    zero = torch.zeros(1, k)  # an all-zero row: the smallest scale, all-zero output
    assert torch.equal(zero @ w, w.through_torch(zero)) and not (zero @ w).any()


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_a_decoder_gives_the_same_greedy_tokens_with_and_without_the_kernels(quantize, tmp_path, fresh_library,
                                                                             monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    from ember.models.attention import make_batch
    from ember.models.loading import load_model

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(tmp_path)

    def decode(model, ids):  # a prefill, then one-row decode steps: the shapes a single chat stream runs
        cache = model.make_cache(1, 64)
        with torch.inference_mode():
            out = [model.forward(make_batch([], [(0, 0, ids)], [True]), cache)]
            for t in range(5):
                out.append(model.forward(make_batch([(0, len(ids) + t, 7 + t)], [], []), cache))
        return torch.cat(out)

    with_kernels = decode(load_model(tmp_path, quantize=quantize).model, list(range(3, 40)))
    monkeypatch.setenv("EMBER_CPU_KERNELS", "0")
    cpu_kernels.library.cache_clear()
    cpu_kernels.max_rows.cache_clear()
    without = decode(load_model(tmp_path, quantize=quantize).model, list(range(3, 40)))
    if quantize is None:  # attention sums in another order: float tolerance
        torch.testing.assert_close(with_kernels, without, rtol=1e-5, atol=1e-5)
    else:  # the C norm sums in order too; an activation that lands on a rounding edge may move one int8 step
        assert torch.nn.functional.cosine_similarity(with_kernels, without).min() > 0.999
    assert torch.equal(with_kernels.argmax(-1), without.argmax(-1))


def test_the_library_is_built_once_and_reused(fresh_library, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = cpu_kernels.library()
    built = list((tmp_path / "ember" / "kernels").glob("cpu_kernels-*.so"))
    assert first is not None and len(built) == 1
    mtime = built[0].stat().st_mtime_ns
    cpu_kernels.library.cache_clear()  # a restart
    assert cpu_kernels.library() is not None and built[0].stat().st_mtime_ns == mtime


def test_without_a_compiler_or_when_disabled_torch_does_the_work(fresh_library, monkeypatch, caplog):
    w = Int8Linear(torch.randn(64, 32))
    x = torch.randn(1, 64)
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert cpu_kernels.library() is None and cpu_kernels.max_rows() == 0
    assert "could not be built" in caplog.text
    assert torch.equal(x @ w, w.through_torch(x))
    monkeypatch.delenv("CC")
    monkeypatch.setenv("EMBER_CPU_KERNELS", "0")
    cpu_kernels.library.cache_clear()
    assert cpu_kernels.library() is None


def test_decode_attention_matches_softmax_attention_per_row(fresh_library):
    """Rows in any slot order, each over its own length, grouped-query heads, a scale: as torch computes it."""
    torch.manual_seed(1)
    slots_n, kv, s, d, h = 5, 3, 40, 64, 9
    kc, vc = torch.randn(slots_n, kv, s, d), torch.randn(slots_n, kv, s, d)
    slots, lengths = torch.tensor([3, 0, 4]), torch.tensor([1, 17, 40])
    q = torch.randn(3, h, d)
    out = cpu_kernels.decode_attention(q, kc, vc, slots, lengths, 0.125)
    for r in range(3):
        k = kc[slots[r], :, : lengths[r]].repeat_interleave(h // kv, 0)  # [H, L, D]
        v = vc[slots[r], :, : lengths[r]].repeat_interleave(h // kv, 0)
        ref = torch.softmax((q[r, :, None, :] @ k.transpose(-1, -2)) * 0.125, -1) @ v  # [H, 1, D]
        torch.testing.assert_close(out[r], ref.reshape(-1), rtol=1e-5, atol=1e-6)


def test_an_unwritable_cache_folder_falls_back_to_a_private_temporary_one(fresh_library, tmp_path, monkeypatch):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    assert cpu_kernels.library() is not None
    assert list((tmp_path / "tmp").glob("ember-kernels-*/cpu_kernels-*.so"))


def test_a_kernel_folder_others_can_write_to_is_not_trusted(fresh_library, tmp_path, monkeypatch, caplog):
    """Code is loaded from the folder: one that other users can write to could hold a planted library."""
    shared = tmp_path / "shared"
    (shared / "ember" / "kernels").mkdir(parents=True)
    (shared / "ember" / "kernels").chmod(0o777)
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared))
    monkeypatch.setenv("TMPDIR", str(shared))  # the fallback folder is made private (0700) and used
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    assert cpu_kernels.library() is not None
    assert not list((shared / "ember" / "kernels").iterdir())  # nothing built or loaded there
    assert list(shared.glob("ember-kernels-*/cpu_kernels-*.so"))
