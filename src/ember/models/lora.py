"""Many LoRA adapters on one base decoder, unmerged: each row of a batch may use a different adapter (or none).

    engine = Engine.load("smollm2-135m-instruct", max_adapters=8)
    engine.generate(["Hi", "Hi"], params, adapters=["my-sft:1", None])   # row 0 with the adapter, row 1 without

An adapter is PEFT's folder (adapter_config.json + adapter_model.safetensors). For every projection it
targets (PEFT's `target_modules`: q/k/v/o_proj, gate/up/down_proj) it holds A [in, r] and B [r, out] scaled
by alpha/r. The decoder calls `LoraSlots.add(layer, proj, x, y)` right after each `y = x @ W`; rows are
grouped by adapter (S-LoRA/Punica's gather: a batch mixes a few adapters, each group is two small matmuls
on its own rows) and the low-rank update `(x_g @ A) @ B * scale` is added into the projection's columns of
that target. The base weights are never copied: an adapter costs its own tensors (2 * r * (in + out) floats
per targeted projection), which is what lets one base serve many adapters.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from ember.errors import CorruptFile, Unsupported

# PEFT target module -> (Ember's fused projection, which part of its columns)
_TARGETS = {"q_proj": ("qkv", 0), "k_proj": ("qkv", 1), "v_proj": ("qkv", 2), "o_proj": ("o", 0),
            "gate_proj": ("gu", 0), "up_proj": ("gu", 1), "down_proj": ("down", 0)}


@dataclass
class Adapter:
    name: str
    # (layer, fused projection) -> list of (column start, column end, A [in, r], B [r, out] * scale)
    deltas: dict[tuple[int, str], list[tuple[int, int, torch.Tensor, torch.Tensor]]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(a.numel() * 4 + b.numel() * 4 for parts in self.deltas.values() for _, _, a, b in parts)


def _column_ranges(decoder) -> dict[str, list[tuple[int, int]]]:
    H, KV, D = decoder.n_heads, decoder.n_kv_heads, decoder.head_dim
    inter = decoder.layers[0].wdown.shape[0]
    return {"qkv": [(0, H * D), (H * D, (H + KV) * D), ((H + KV) * D, (H + 2 * KV) * D)],
            "o": [(0, decoder.hidden)], "gu": [(0, inter), (inter, 2 * inter)], "down": [(0, decoder.hidden)]}


def load_adapter(folder: Path, decoder, name: str) -> Adapter:
    """Reads a PEFT LoRA folder for this decoder (a Llama-family one); refuses what it cannot apply exactly."""
    folder = Path(folder)
    if getattr(decoder, "family", None) != "llama":
        raise Unsupported("unmerged LoRA adapters are served on Llama-family bases only; merge it instead "
                          "(`ember models merge`)")
    try:
        conf = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError) as e:
        raise CorruptFile(f"{folder}: cannot read adapter_config.json: {e}") from None
    if conf.get("peft_type", "LORA") != "LORA" or conf.get("use_dora") or conf.get("use_rslora"):
        raise Unsupported(f"{name}: only plain LoRA adapters are served unmerged (not DoRA/rsLoRA)")
    r, alpha = int(conf["r"]), float(conf.get("lora_alpha", conf["r"]))
    scale = alpha / r
    files = sorted(folder.glob("adapter_model*.safetensors"))
    if not files:
        raise CorruptFile(f"{folder}: no adapter_model.safetensors")
    weights = {}
    for f in files:
        weights.update(load_file(str(f)))
    ranges = _column_ranges(decoder)
    ad = Adapter(name)
    for key, a in weights.items():
        if ".lora_A." not in key:
            continue
        b = weights.get(key.replace(".lora_A.", ".lora_B."))
        parts = key.split(".")
        try:
            layer = int(parts[parts.index("layers") + 1])
            module = next(p for p in parts if p in _TARGETS)
        except (ValueError, StopIteration, IndexError):
            raise Unsupported(f"{name}: LoRA on {key} is not supported unmerged") from None
        if b is None:
            raise CorruptFile(f"{name}: {key} has no lora_B")
        proj, part = _TARGETS[module]
        lo, hi = ranges[proj][part]
        ad.deltas.setdefault((layer, proj), []).append(
            (lo, hi, a.float().t().contiguous(), (b.float().t() * scale).contiguous()))
    if not ad.deltas:
        raise CorruptFile(f"{name}: the adapter holds no LoRA weights")
    if any(k.endswith("modules_to_save") or ".modules_to_save." in k for k in weights):
        raise Unsupported(f"{name}: adapters with modules_to_save are served merged only")
    return ad


class LoraSlots:
    """The adapters resident for one decoder, by slot; `rows` maps each token row of a step to a slot or -1."""

    def __init__(self):
        self.slots: list[Adapter | None] = []

    def put(self, ad: Adapter, slot: int | None = None) -> int:
        if slot is None:
            slot = len(self.slots)
            self.slots.append(ad)
        else:
            self.slots[slot] = ad
        return slot

    def groups(self, rows: torch.Tensor | None) -> list[tuple[Adapter, torch.Tensor]] | None:
        """Once per step: each adapter used by the step with the indices of its rows (S-LoRA's gather)."""
        if rows is None:
            return None
        out = []
        for slot in torch.unique(rows).tolist():
            ad = self.slots[slot] if slot >= 0 else None
            if ad is not None:
                out.append((ad, (rows == slot).nonzero().squeeze(1)))
        return out or None

    @staticmethod
    def add(layer: int, proj: str, x: torch.Tensor, y: torch.Tensor, groups) -> torch.Tensor:
        """Adds each row group's adapter update into y (a fresh projection output, changed in place)."""
        for ad, idx in groups:
            parts = ad.deltas.get((layer, proj))
            if not parts:
                continue
            xg = x.index_select(0, idx)
            for lo, hi, a, b in parts:
                y[:, lo:hi].index_add_(0, idx, (xg @ a) @ b)
        return y
