"""Optional int8 projections for Llama-family decoders: SmoothQuant calibration, then int8 GEMMs.

    ember serve --model smollm2-135m-instruct --quantize int8     # load_model(..., quantize="int8")

Faster than fp32 where weight bandwidth dominates, not bit-equal to transformers; bench/engine_bench.py
--int8 measures both its speed and its perplexity against fp32 on the same texts.
"""

import torch

from ember.errors import Unsupported
from ember.models import cpu_kernels


class Int8Linear:
    """An int8 weight (per output channel scales) used as `x @ w`: activations are quantized per token
    (per row), multiplied with `torch._int_mm` (oneDNN VNNI/AMX int8 GEMM, exact int32 accumulation) and
    rescaled; 1-8 rows go through one C call with the same bits (models/cpu_kernels.c). Per-row activation
    scales keep each row independent of the rest of the batch, so a seed still gives the same text alone or
    batched, and one outlier token does not coarsen its neighbours."""

    def __init__(self, wt: torch.Tensor):
        self.scale = (wt.abs().amax(0) / 127).clamp(min=1e-8)  # [N]
        q = torch.round(wt / self.scale).clamp(-127, 127).to(torch.int8)
        self.q = q.t().contiguous().t()  # column-major [K, N]: the faster layout for _int_mm here
        self.rowsum = self.q.sum(0, dtype=torch.int32)  # [N], for the C kernel's unsigned activations
        self.shape = tuple(wt.shape)

    def __rmatmul__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and 0 < x.shape[0] <= cpu_kernels.max_rows() and x.dtype == torch.float32:
            # A decode step of a few rows: one C call, the same bits (models/cpu_kernels.c).
            return cpu_kernels.int8_linear(x, self.q.t(), self.rowsum, self.scale)
        return self.through_torch(x)

    def through_torch(self, x: torch.Tensor) -> torch.Tensor:
        # Same values as (x.abs().amax(-1) / 127).clamp(1e-8), x / sx, int32 -> float * sx * scale, in fewer
        # ops (a one-stream step runs 120 of these; their dispatch, not the GEMM, dominates): the inf-norm
        # is max |x| in one pass, the clamp works in place and int32 * float promotes without a copy.
        sx = (torch.linalg.vector_norm(x, float("inf"), -1, keepdim=True) / 127).clamp_(min=1e-8)
        xq = (x / sx).round_().to(torch.int8)
        return (torch._int_mm(xq, self.q) * sx).mul_(self.scale)  # in place: no extra [M, N] temporary


# The LM head is 113 of SmolLM2's 135M weights' MB in fp32 and half of a one-stream int8 step. Plain int8 cost
# +2.8% perplexity on code (over the 2% bound); smoothed into the final norm it is measured in docs/engine.md.
INT8_HEAD = True
HEAD_ALPHA = 0.4  # measured: 0.3, 0.45, 0.5 and 0.75 each put prose or code over +2%


class _ActMax:
    """Calibration stand-in for a weight: records the per-input-channel max |x| it is multiplied with."""

    def __init__(self, w: torch.Tensor):
        self.w, self.amax = w, torch.zeros(w.shape[0])

    def __rmatmul__(self, x: torch.Tensor) -> torch.Tensor:
        self.amax = torch.maximum(self.amax, x.abs().amax(0))
        return x @ self.w


# Calibration text for SmoothQuant scales: mixed prose, chat markup and code (not the bench's perplexity text).
CALIBRATION = ("<|im_start|>user\nCan you explain how photosynthesis works?<|im_end|>\n<|im_start|>assistant\n"
               "Plants capture light with chlorophyll and turn water and carbon dioxide into sugar and oxygen. "
               "def mean(xs):\n    return sum(xs) / len(xs)\n\nprint(mean([1, 2, 3]))\n"
               "The committee met on Tuesday, 4 March 2024, to discuss the budget: revenue rose 12% while costs "
               "fell. Il fait beau aujourd'hui. Quick facts: Mount Everest is 8,849 m tall; water boils at 100 C.")


def _smooth(model, tokenizer, alpha: float = 0.5, head: bool = False) -> None:
    """SmoothQuant: moves activation outliers into the weights, exactly (the network computes the same
    function in fp32), so per-tensor int8 activations lose less. For qkv and gate/up the per-channel
    divisor folds into the preceding RMSNorm weight; for down_proj it folds into the up-projection; with
    head=True the LM head's folds into the final norm (the embedding lookup keeps its own copy)."""
    from ember.models.attention import make_batch

    rec = {}
    for i, L in enumerate(model.layers):
        for name in ("wqkv", "wgu", "wdown"):
            rec[i, name] = _ActMax(getattr(L, name))
            setattr(L, name, rec[i, name])
    if head:
        rec["head"] = _ActMax(model.lm_head)
        model.lm_head = rec["head"]
    ids = tokenizer(CALIBRATION)["input_ids"] if tokenizer is not None else list(range(1, 200))
    with torch.inference_mode():
        b = make_batch([], [(0, 0, ids)], [True])
        b.logit_index = torch.arange(len(ids))  # every position reaches the head
        model.forward(b, model.make_cache(1, len(ids)))

    def scales(r, alpha=alpha):
        return (r.amax.clamp(min=1e-5) ** alpha / r.w.abs().amax(1).clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)

    for i, L in enumerate(model.layers):
        for name in ("wqkv", "wgu", "wdown"):
            setattr(L, name, rec[i, name].w)
        s = scales(rec[i, "wqkv"])
        L.ln1, L.wqkv = L.ln1 / s, L.wqkv * s[:, None]
        s = scales(rec[i, "wgu"])
        L.ln2, L.wgu = L.ln2 / s, L.wgu * s[:, None]
        s = scales(rec[i, "wdown"])
        inter = L.wdown.shape[0]
        L.wgu = L.wgu.clone()
        L.wgu[:, inter:] /= s[None, :]  # up-projection columns: silu(g) * (u / s)
        L.wdown = L.wdown * s[:, None]
    if head:
        s = scales(rec["head"], HEAD_ALPHA)
        model.norm, model.lm_head = model.norm / s, rec["head"].w * s[:, None]


def quantize_model(model, mode: str, tokenizer=None) -> None:
    """Replaces the layers' projection matrices of a Llama-family decoder with Int8Linear (in place), after
    SmoothQuant calibration on a short built-in text."""
    if mode != "int8":
        raise Unsupported(f"quantization {mode!r} is not supported (only 'int8')")
    if getattr(model, "family", None) != "llama":
        raise Unsupported("int8 weights are implemented for the Llama family only")
    if model.embed is None:  # tied: the lookup keeps the unscaled matrix; the head is smoothed and quantized
        model.embed = model.lm_head.t().contiguous()
    _smooth(model, tokenizer, head=INT8_HEAD)
    for layer in model.layers:
        for name in ("wqkv", "wo", "wgu", "wdown"):
            setattr(layer, name, Int8Linear(getattr(layer, name)))
    if INT8_HEAD:
        model.lm_head = Int8Linear(model.lm_head)
