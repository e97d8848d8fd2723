"""A whole int8 decode step in one native call (cpu_kernels.c's ember_int8_decode), for steps of 1-8 rows.

    ember serve --model smollm2-135m-instruct --quantize int8     # load_model attaches it to the decoder

With the projections in C, a one-row int8 step still ran ~3,600 small torch calls (norms, RoPE, cache writes,
views) and the Python between them: more time than the weights took to stream. Here the layers run in C, one
call per step. Every piece is the same arithmetic as the layer-by-layer path (the int8 decoder uses the same
C norm and SiLU there, the projections are bit-identical, RoPE and residuals round like torch's ops), so a row
gets the same bits whichever path or batch it runs in (tests/models/test_native_decode.py).
"""

import torch

from ember.models import cpu_kernels
from ember.models.attention import KVCache, StepBatch
from ember.models.int8 import Int8Linear


class NativeInt8Decode:
    """Holds the per-layer pointer table of an int8 Llama decoder. The decoder owns the tensors (and this
    object): no reference back, so unloading a model frees it at once, without waiting for the cycle GC."""

    def __init__(self, model):
        self.table = (cpu_kernels.Int8Layer * len(model.layers))()
        for row, L in zip(self.table, model.layers):
            row.ln1, row.ln2 = L.ln1.data_ptr(), L.ln2.data_ptr()
            for short, name in (("qkv", "wqkv"), ("o", "wo"), ("gu", "wgu"), ("down", "wdown")):
                lin = getattr(L, name)
                setattr(row, "w" + short, lin.q.data_ptr())  # column-major [K, N]: row-major [N, K] in memory
                setattr(row, "r" + short, lin.rowsum.data_ptr())
                setattr(row, "s" + short, lin.scale.data_ptr())

    @staticmethod
    def supports(model) -> bool:
        """Every projection int8 and no biases; norms contiguous; a head size the kernel's buffer holds."""
        return (cpu_kernels.max_rows() > 0 and model.head_dim <= 1024 and all(
            all(isinstance(getattr(L, n), Int8Linear) for n in ("wqkv", "wo", "wgu", "wdown"))
            and L.bqkv is None and L.bo is None and L.ln1.is_contiguous() and L.ln2.is_contiguous()
            for L in model.layers))

    def decode(self, m, x: torch.Tensor, b: StepBatch, cache: KVCache) -> torch.Tensor:
        """x [M, hidden] (decoder m's embeddings of M <= max_rows decode rows) -> the last layer's output."""
        cache.make_finite(b)  # keeps the cache's bookkeeping for steps that take the torch path
        rows, hidden = x.shape
        H, KV, D = m.n_heads, m.n_kv_heads, m.head_dim
        inter = m.layers[0].wdown.shape[0]
        x = x.contiguous()  # this step's own tensor (the embedding lookup's): updated in place
        slots, positions = b.slots.contiguous(), b.positions.contiguous()
        lmax = int(positions.max()) + 1
        nqkv = (H + 2 * KV) * D
        buf = torch.empty(rows * (hidden + nqkv + H * D + hidden + 2 * inter + inter))
        xu = torch.empty(rows * max(hidden, H * D, inter), dtype=torch.uint8)
        scores = torch.empty(rows * H * lmax)
        n_slots, S = cache.k.shape[1], cache.k.shape[3]
        cpu_kernels.library().ember_int8_decode(
            self.table, len(m.layers), x.data_ptr(), rows, hidden, slots.data_ptr(), positions.data_ptr(),
            m.cos.data_ptr(), m.sin_rot.data_ptr(), H, KV, D, inter, cache.k.data_ptr(), cache.v.data_ptr(),
            n_slots, S, m.eps, m.attn_scale, buf.data_ptr(), xu.data_ptr(), scores.data_ptr(), lmax,
            torch.get_num_threads())
        return x
