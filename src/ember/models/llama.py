"""Compact inference implementation of the Llama family (Llama 2/3, SmolLM2, Mistral-style GQA).

    engine = Engine.load("smollm2-135m-instruct")      # loading.load_model picks LlamaDecoder for model_type llama

Weights come from a Hugging Face safetensors folder and are rearranged once at load time for CPU decode:
Q/K/V fused into one [hidden, (H+2KV)*D] matrix and gate/up into one [hidden, 2*I] matrix, pre-transposed
so every projection is a plain `x @ W`. load_model then swaps each matrix for a oneDNN-packed one
(models/packed.py) or an int8 one (models/int8.py); both also work as `x @ W`, so this file does not
change. Logits equal transformers' LlamaForCausalLM within float tolerance (tests/models/test_decoders.py).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ember.errors import Unsupported
from ember.models import cpu_kernels
from ember.models.attention import KVCache, StepBatch


@dataclass
class LlamaLayer:
    ln1: torch.Tensor
    wqkv: torch.Tensor  # [hidden, (H + 2*KV) * D]
    bqkv: torch.Tensor | None
    wo: torch.Tensor  # [H*D, hidden]
    bo: torch.Tensor | None  # o_proj bias (attention_bias=True)
    ln2: torch.Tensor
    wgu: torch.Tensor  # [hidden, 2*I]
    wdown: torch.Tensor  # [I, hidden]


def _clone(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clone()


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    # Same operation order as transformers' LlamaRMSNorm so greedy decoding stays token-identical.
    var = x.pow(2).mean(-1, keepdim=True)
    return w * (x * var.add_(eps).rsqrt_())  # in place on the fresh [T, 1] temporary: same values


def _native_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return cpu_kernels.rms_norm(x, w, eps)


def rope_inv_freq(cfg: dict) -> tuple[torch.Tensor, float]:
    """inv_freq and attention scaling exactly as transformers computes them for this config."""
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    if rope_type == "default":
        return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)), 1.0
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise Unsupported(f"RoPE type {rope_type!r} is not supported")
    hf_cfg = AutoConfig.for_model(**cfg)
    return ROPE_INIT_FUNCTIONS[rope_type](hf_cfg, "cpu")


class LlamaDecoder:
    family = "llama"

    def __init__(self, cfg: dict, weights: dict[str, torch.Tensor]):
        self.cfg = cfg
        self.hidden = cfg["hidden_size"]
        self.n_heads = cfg["num_attention_heads"]
        self.n_kv_heads = cfg.get("num_key_value_heads") or self.n_heads
        self.head_dim = cfg.get("head_dim") or self.hidden // self.n_heads
        self.n_layers = cfg["num_hidden_layers"]
        self.vocab_size = cfg["vocab_size"]
        self.eps = cfg.get("rms_norm_eps", 1e-6)
        self.max_positions = cfg.get("max_position_embeddings", 2048)
        if cfg.get("hidden_act", "silu") != "silu":
            raise Unsupported(f"activation {cfg.get('hidden_act')!r} is not supported for llama models")
        if cfg.get("mlp_bias"):
            raise Unsupported("Llama models with MLP biases (mlp_bias=true) are not supported")
        self.scale = self.head_dim**-0.5
        self.lora = None  # models.lora.LoraSlots once an adapter is served on this base
        # models.native_decode.NativeInt8Decode for an int8 decoder when the C kernels are built: then the C
        # norm and SiLU serve every path, and steps of a few decode rows run all layers in one native call.
        self.native = None
        w = weights
        embed = w.pop("model.embed_tokens.weight")
        head = w.pop("lm_head.weight", None)
        self.tied = head is None or cfg.get("tie_word_embeddings", False)
        self.lm_head = (embed if self.tied else head).t().contiguous()  # [hidden, V]
        # Tied weights are kept once, transposed for the LM head; the embedding lookup gathers its columns.
        self.embed = None if self.tied else embed.clone()
        del embed
        # clone(): safetensors tensors can be views of one buffer of the whole file, which a kept view pins.
        self.norm = w.pop("model.norm.weight").clone()
        self.layers = []
        for i in range(self.n_layers):
            p = f"model.layers.{i}."
            q, k, v = (w.pop(p + f"self_attn.{n}_proj.weight") for n in "qkv")
            bias = [w.pop(p + f"self_attn.{n}_proj.bias", None) for n in "qkv"]
            self.layers.append(LlamaLayer(
                ln1=w.pop(p + "input_layernorm.weight").clone(),
                wqkv=torch.cat([q, k, v], 0).t().contiguous(),
                bqkv=torch.cat(bias) if bias[0] is not None else None,
                wo=w.pop(p + "self_attn.o_proj.weight").t().contiguous(),
                bo=_clone(w.pop(p + "self_attn.o_proj.bias", None)),
                ln2=w.pop(p + "post_attention_layernorm.weight").clone(),
                wgu=torch.cat([w.pop(p + "mlp.gate_proj.weight"), w.pop(p + "mlp.up_proj.weight")], 0)
                .t().contiguous(),
                wdown=w.pop(p + "mlp.down_proj.weight").t().contiguous(),
            ))
        unused = [k for k in w if not k.endswith("rotary_emb.inv_freq")]
        if unused:  # a weight this decoder would silently ignore means its outputs would be wrong
            raise Unsupported(f"weights the Llama decoder does not implement: {', '.join(sorted(unused)[:4])}")
        inv_freq, att_scale = rope_inv_freq(cfg)
        freqs = torch.arange(self.max_positions, dtype=torch.float)[:, None] * inv_freq[None, :]
        emb = torch.cat([freqs, freqs], -1)
        self.cos, self.sin = emb.cos() * att_scale, emb.sin() * att_scale
        # rotate_half(x) * sin == x.roll(D/2) * sin_rot, with sin_rot's first half negated: exactly equal
        # (a negation is exact), one op instead of slice/neg/slice/cat.
        half = self.head_dim // 2
        self.sin_rot = torch.cat([-self.sin[:, :half], self.sin[:, half:]], -1)
        # Attention scale still applied to q in attend(); fold_attention_scale() moves it into the weights.
        self.attn_scale = self.scale

    def fold_attention_scale(self) -> None:
        """Moves the 1/sqrt(head_dim) score scale into the q columns of every fused QKV projection (and
        its bias), so a step skips one multiply per layer. Only for a power-of-two scale, where scaling
        a column is exact: q, and so the logits, stay bit-identical. Plain, packed-to-be fp32 weights
        and Int8Linear (its per-column scale) both fold; call it before pack_weights."""
        s = self.scale
        if self.attn_scale != s or s != 2.0 ** round(torch.log2(torch.tensor(s)).item()):
            return
        from ember.models.int8 import Int8Linear

        n = self.n_heads * self.head_dim
        for L in self.layers:
            if isinstance(L.wqkv, Int8Linear):
                L.wqkv.scale[:n] *= s
            elif isinstance(L.wqkv, torch.Tensor):
                L.wqkv = L.wqkv.clone()
                L.wqkv[:, :n] *= s
            else:
                return  # already packed: leave the scale in attend()
            if L.bqkv is not None:
                L.bqkv = L.bqkv.clone()
                L.bqkv[:n] *= s
        self.attn_scale = 1.0

    def make_cache(self, n_slots: int, max_seq_len: int) -> KVCache:
        return KVCache(self.n_layers, n_slots, self.n_kv_heads, max_seq_len, self.head_dim)

    def forward(self, b: StepBatch, cache: KVCache) -> torch.Tensor:
        """Runs one step over every new token in the batch; returns logits [len(b.logit_index), V]."""
        T = b.tokens.shape[0]
        H, KV, D = self.n_heads, self.n_kv_heads, self.head_dim
        x = self.embed[b.tokens] if self.embed is not None else self.lm_head[:, b.tokens].t().contiguous()
        cos, sin = self.cos[b.positions][:, None, :], self.sin_rot[b.positions][:, None, :]
        half, nqk = D // 2, (H + KV) * D
        rows = self.lora.groups(getattr(b, "lora_rows", None)) if self.lora is not None else None
        native = self.native
        norm = rms_norm if native is None else _native_norm
        if native is not None and rows is None and b.n_decode == T <= cpu_kernels.max_rows():
            x = native.decode(self, x, b, cache)
        else:
            for i, L in enumerate(self.layers):
                h = norm(x, L.ln1, self.eps)
                qkv = h @ L.wqkv if L.bqkv is None else (h @ L.wqkv) + L.bqkv  # packed: bias fused, bqkv None
                if rows is not None:  # per-row LoRA adapters (models/lora.py), unmerged
                    qkv = self.lora.add(i, "qkv", h, qkv, rows)
                qk = qkv[:, :nqk].view(T, H + KV, D)  # q and k heads side by side: one RoPE for both
                qk = qk * cos + qk.roll(half, -1) * sin
                q, k = qk[:, :H], qk[:, H:]
                v = qkv[:, nqk:].view(T, KV, D)
                a = cache.attend(i, q, k, v, b, self.attn_scale)
                o = a @ L.wo if L.bo is None else (a @ L.wo) + L.bo
                x += o if rows is None else self.lora.add(i, "o", a, o, rows)  # x is this step's own tensor
                h = norm(x, L.ln2, self.eps)
                gu = h @ L.wgu if rows is None else self.lora.add(i, "gu", h, h @ L.wgu, rows)
                inter = gu.shape[1] // 2
                act = F.silu(gu[:, :inter]).mul_(gu[:, inter:]) if native is None else cpu_kernels.silu_mul(gu)
                x += act @ L.wdown if rows is None else self.lora.add(i, "down", act, act @ L.wdown, rows)
        if b.logit_index.shape[0] != T or b.n_decode != T:  # decode-only steps want every row, in order
            x = x[b.logit_index]
        x = norm(x, self.norm, self.eps)
        return x @ self.lm_head
