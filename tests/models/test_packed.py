"""oneDNN-packed weights compute what `x @ W (+ b)` computes, for every batch size the engine uses.

    .venv/bin/python -m pytest tests/models/test_packed.py -q
"""

import pytest
import torch

from ember.models.packed import PackedLinear, onednn_available


@pytest.mark.parametrize("rows", [1, 7, 32, 300])
def test_packed_linear_matches_matmul(rows):
    torch.manual_seed(0)
    w, b = torch.randn(576, 960) / 24, torch.randn(960)
    x = torch.randn(rows, 576)
    torch.testing.assert_close(x @ PackedLinear(w), x @ w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x @ PackedLinear(w, b), torch.addmm(b, x, w), atol=1e-5, rtol=1e-5)
    # A strided view (the decoders slice fused projections) is read correctly too.
    wide = torch.randn(rows, 2 * 576)
    torch.testing.assert_close(wide[:, :576] @ PackedLinear(w), wide[:, :576] @ w, atol=1e-5, rtol=1e-5)


def test_packing_is_used_on_this_machine():
    # The speed of the engine rests on it: a torch build without oneDNN would fall back silently.
    assert onednn_available() and PackedLinear(torch.randn(8, 4)).packed
