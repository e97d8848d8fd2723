"""Compact inference implementation of the GPT-2 family (learned positions, LayerNorm, fused c_attn).

    engine = Engine.load("/path/to/gpt2-hf-folder")     # loading.load_model picks GPT2Decoder for model_type gpt2

GPT-2's Conv1D weights are already stored as [in, out], i.e. pre-transposed for `x @ W`; c_attn is already
a fused QKV projection. Logits equal transformers' GPT2LMHeadModel within float tolerance
(tests/models/test_decoders.py).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ember.errors import Unsupported
from ember.models.attention import KVCache, StepBatch
from ember.models.packed import linear


@dataclass
class GPT2Layer:
    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    # Weights are [in, out] tensors, or PackedLinear with the bias fused in (then the b_* field is None).
    w_attn: torch.Tensor  # [hidden, 3*hidden]
    b_attn: torch.Tensor
    w_proj: torch.Tensor
    b_proj: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    w_fc: torch.Tensor
    b_fc: torch.Tensor
    w_out: torch.Tensor
    b_out: torch.Tensor


class GPT2Decoder:
    family = "gpt2"

    def __init__(self, cfg: dict, weights: dict[str, torch.Tensor]):
        from transformers.activations import ACT2FN  # a table of plain functions, no model code

        self.cfg = cfg
        self.hidden = cfg["n_embd"]
        self.n_heads = self.n_kv_heads = cfg["n_head"]
        self.head_dim = self.hidden // self.n_heads
        self.n_layers = cfg["n_layer"]
        self.vocab_size = cfg["vocab_size"]
        self.max_positions = cfg.get("n_positions", 1024)
        self.eps = cfg.get("layer_norm_epsilon", 1e-5)
        act = cfg.get("activation_function", "gelu_new")
        if act not in ACT2FN:
            raise Unsupported(f"activation {act!r} is not supported")
        self.act = ACT2FN[act]
        if cfg.get("reorder_and_upcast_attn") or cfg.get("add_cross_attention"):
            raise Unsupported("GPT-2 variants with cross attention or reordered attention are not supported")
        self.scales = []
        for i in range(self.n_layers):
            s = self.head_dim**-0.5 if cfg.get("scale_attn_weights", True) else 1.0
            if cfg.get("scale_attn_by_inverse_layer_idx"):
                s /= float(i + 1)
            self.scales.append(s)
        w = {k.removeprefix("transformer."): t for k, t in weights.items()}
        self.wte, self.wpe = w.pop("wte.weight"), w.pop("wpe.weight")
        head = w.pop("lm_head.weight", None)
        self.lm_head = (self.wte if head is None or cfg.get("tie_word_embeddings", True) else head).t().contiguous()
        self.lnf_w, self.lnf_b = w.pop("ln_f.weight"), w.pop("ln_f.bias")
        self.layers = []
        for i in range(self.n_layers):
            def g(n, p=f"h.{i}."):
                return w.pop(p + n).contiguous()

            self.layers.append(GPT2Layer(
                g("ln_1.weight"), g("ln_1.bias"), g("attn.c_attn.weight"), g("attn.c_attn.bias"),
                g("attn.c_proj.weight"), g("attn.c_proj.bias"), g("ln_2.weight"), g("ln_2.bias"),
                g("mlp.c_fc.weight"), g("mlp.c_fc.bias"), g("mlp.c_proj.weight"), g("mlp.c_proj.bias"),
            ))

    def make_cache(self, n_slots: int, max_seq_len: int) -> KVCache:
        return KVCache(self.n_layers, n_slots, self.n_kv_heads, max_seq_len, self.head_dim)

    def forward(self, b: StepBatch, cache: KVCache) -> torch.Tensor:
        T = b.tokens.shape[0]
        H, D, E = self.n_heads, self.head_dim, self.hidden
        x = self.wte[b.tokens] + self.wpe[b.positions]
        for i, L in enumerate(self.layers):
            h = F.layer_norm(x, (E,), L.ln1_w, L.ln1_b, self.eps)
            qkv = linear(h, L.w_attn, L.b_attn)
            q, k, v = (t.view(T, H, D) for t in qkv.split(E, dim=1))
            a = cache.attend(i, q, k, v, b, self.scales[i])
            x = x + linear(a, L.w_proj, L.b_proj)
            h = F.layer_norm(x, (E,), L.ln2_w, L.ln2_b, self.eps)
            x = x + linear(self.act(linear(h, L.w_fc, L.b_fc)), L.w_out, L.b_out)
        x = F.layer_norm(x[b.logit_index], (E,), self.lnf_w, self.lnf_b, self.eps)
        return x @ self.lm_head
