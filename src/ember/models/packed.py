"""fp32 projection weights stored in oneDNN's blocked layout, used as `x @ w` by the decoders.

    engine = Engine.load("smollm2-135m-instruct")   # loading.load_model calls pack_weights(model)

On these CPUs a prepacked oneDNN fp32 GEMM runs the decode-step shapes 2-3x faster than `x @ W` through
MKL (SmolLM2, 2 cores, M = 32 rows: 23 ms of GEMM per step instead of 64; M = 1: 8.8 ms instead of 10.9;
measured in docs/engine.md). The weight is reordered once at load; every call is then one oneDNN
primitive with the bias fused. Results are fp32 with fp32 accumulation, as before: only the summation
order differs, so greedy output stays token-identical to transformers (tests/engine/test_engine.py).
Without oneDNN (a torch build without mkldnn) the weight stays a plain [K, N] matrix.
"""

import torch

# Batch-size hint for oneDNN's weight layout; measured equally fast from 1 to 300 rows on SmolLM2's shapes.
BATCH_HINT = 32


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


class PackedLinear:
    """A [K, N] fp32 weight (and optional [N] bias) used as `x @ packed` for x [M, K] -> [M, N]."""

    def __init__(self, wt: torch.Tensor, bias: torch.Tensor | None = None):
        self.shape = tuple(wt.shape)
        self.bias = None if bias is None else bias.contiguous()
        self.packed = onednn_available() and wt.dtype == torch.float32
        # oneDNN takes the weight as [N, K] (nn.Linear's layout) and returns it reordered, as a new tensor.
        self.w = torch.ops.mkldnn._reorder_linear_weight(wt.t().contiguous(), BATCH_HINT) if self.packed else wt

    def __rmatmul__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.w, self.bias, "none", [], "")
        return x @ self.w if self.bias is None else torch.addmm(self.bias, x, self.w)


def linear(x: torch.Tensor, w, b: torch.Tensor | None) -> torch.Tensor:
    """x @ w + b for a plain weight (bias kept apart) or a PackedLinear (bias fused, b is None)."""
    return x @ w if b is None else torch.addmm(b, x, w)


def pack_weights(model) -> None:
    """Replaces a decoder's fp32 weight matrices with PackedLinear, in place (int8 ones are left alone)."""
    if not onednn_available():
        return
    if model.family == "llama":
        for L in model.layers:
            if isinstance(L.wqkv, torch.Tensor):  # a q/k/v bias, if any, is fused into the packed projection
                L.wqkv, L.bqkv = PackedLinear(L.wqkv, L.bqkv), None
            if isinstance(L.wo, torch.Tensor):
                L.wo, L.bo = PackedLinear(L.wo, L.bo), None
            for name in ("wgu", "wdown"):
                if isinstance(getattr(L, name), torch.Tensor):
                    setattr(L, name, PackedLinear(getattr(L, name)))
        if isinstance(model.lm_head, torch.Tensor):
            if model.embed is None:
                # Tied: the lookup gathered columns of the head; the packed head cannot be indexed.
                model.embed = model.lm_head.t().contiguous()
            model.lm_head = PackedLinear(model.lm_head)
    elif model.family == "gpt2":
        for L in model.layers:
            for w, b in (("w_attn", "b_attn"), ("w_proj", "b_proj"), ("w_fc", "b_fc"), ("w_out", "b_out")):
                setattr(L, w, PackedLinear(getattr(L, w), getattr(L, b)))
                setattr(L, b, None)
        model.lm_head = PackedLinear(model.lm_head)
