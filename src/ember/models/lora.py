"""Many LoRA adapters on one base decoder, unmerged: each row of a batch may use a different adapter (or none).

    engine = Engine.load("smollm2-135m-instruct", max_adapters=8)
    engine.generate(["Hi", "Hi"], params, adapters=["my-sft:1", None])   # row 0 with the adapter, row 1 without

An adapter is PEFT's folder (adapter_config.json + adapter_model.safetensors). For every projection it
targets (PEFT's `target_modules`: q/k/v/o_proj, gate/up/down_proj) it holds A [in, r] and B [r, out] scaled
by alpha/r. The decoder calls `LoraSlots.add(layer, proj, x, y, step)` right after each `y = x @ W`: the
step's active adapters' A matrices are concatenated (cached while the set stays the same), every row is
multiplied by all of them at once, a per-row mask keeps only the row's own adapter's rank columns, and the
concatenated B adds the update into the projection's columns of that target: `((x A_cat) * mask) B_cat`
(Punica's segmented matmul as two dense matmuls; with a few small-rank adapters this beats gathering).
The base weights are never copied: an adapter costs its own tensors (2 * r * (in + out) floats
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
    rank: int
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
    if (conf.get("peft_type", "LORA") != "LORA" or conf.get("use_dora") or conf.get("use_rslora")
            or conf.get("rank_pattern") or conf.get("alpha_pattern")):
        raise Unsupported(f"{name}: only plain LoRA adapters (one rank and alpha) are served unmerged; merge it")
    r, alpha = int(conf["r"]), float(conf.get("lora_alpha", conf["r"]))
    scale = alpha / r
    files = sorted(folder.glob("adapter_model*.safetensors"))
    if not files:
        raise CorruptFile(f"{folder}: no adapter_model.safetensors")
    weights = {}
    for f in files:
        weights.update(load_file(str(f)))
    ranges = _column_ranges(decoder)
    # A decoder whose q weights carry the attention scale (LlamaDecoder.fold_attention_scale) needs the same
    # factor on the q update, or the adapter's share of the scores would be unscaled.
    q_fold = decoder.scale if getattr(decoder, "attn_scale", None) == 1.0 and decoder.scale != 1.0 else 1.0
    ad = Adapter(name, r)
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
        k = scale * q_fold if module == "q_proj" else scale
        ad.deltas.setdefault((layer, proj), []).append(
            (lo, hi, a.float().t().contiguous(), (b.float().t() * k).contiguous()))
    if not ad.deltas:
        raise CorruptFile(f"{name}: the adapter holds no LoRA weights")
    if any(k.endswith("modules_to_save") or ".modules_to_save." in k for k in weights):
        raise Unsupported(f"{name}: adapters with modules_to_save are served merged only")
    return ad


class LoraSlots:
    """The adapters resident for one decoder, by slot; `rows` maps each token row of a step to a slot or -1."""

    def __init__(self):
        self.slots: list[Adapter | None] = []
        self._key: tuple | None = ()  # the active adapter slots the concatenated A/B in _cat belong to
        self._cat: dict = {}

    def put(self, ad: Adapter, slot: int | None = None) -> int:
        # Called from a request's thread while the engine thread may be inside a step: the step keeps its own
        # (active, concatenations) pair, so only the next step sees the change (a rebuild).
        self._key = None
        if slot is None:
            slot = len(self.slots)
            self.slots.append(ad)
        else:
            self.slots[slot] = ad
        return slot

    def groups(self, rows: torch.Tensor | None):
        """Once per step: the adapters the step uses and a [T, sum of ranks] mask that keeps, for each row,
        only its own adapter's columns (Punica's segmented matmul as two dense matmuls: with a few adapters
        of small rank, computing every row against every active adapter's A costs less than gathering)."""
        if rows is None:
            return None
        active = tuple(s for s in torch.unique(rows).tolist() if s >= 0 and self.slots[s] is not None)
        if not active:
            return None
        if active != self._key:
            self._key, self._cat = active, {}
        ads = [self.slots[s] for s in active]
        cols = [(rows == s).unsqueeze(1).expand(-1, ad.rank) for s, ad in zip(active, ads)]
        return ads, self._cat, torch.cat(cols, 1).float()

    @staticmethod
    def _parts(layer: int, proj: str, width: int, ads: list, cat: dict):
        """(lo, hi, A_cat [in, R], B_cat [R, hi - lo]) over the step's adapters, cached until the set changes."""
        key = (layer, proj)
        if key not in cat:
            ranges = sorted({(lo, hi) for ad in ads for lo, hi, _, _ in ad.deltas.get(key, [])})
            parts = []
            for lo, hi in ranges:
                As, Bs = [], []
                for ad in ads:
                    found = next(((a, b) for l2, h2, a, b in ad.deltas.get(key, []) if (l2, h2) == (lo, hi)), None)
                    As.append(found[0] if found else torch.zeros(width, ad.rank))
                    Bs.append(found[1] if found else torch.zeros(ad.rank, hi - lo))
                parts.append((lo, hi, torch.cat(As, 1).contiguous(), torch.cat(Bs, 0).contiguous()))
            cat[key] = parts
        return cat[key]

    @staticmethod
    def add(layer: int, proj: str, x: torch.Tensor, y: torch.Tensor, step) -> torch.Tensor:
        """Adds each row's adapter update into y (a fresh projection output, changed in place)."""
        ads, cat, mask = step
        for lo, hi, a, b in LoraSlots._parts(layer, proj, x.shape[1], ads, cat):
            y[:, lo:hi] += ((x @ a) * mask) @ b
        return y
