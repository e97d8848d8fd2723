"""Hugging Face folder (or registry reference) -> config, tokenizer, and one of Ember's decoders.

    engine = Engine.load("smollm2-135m-instruct")   # calls resolve_folder + load_model below

Only safe formats are read: config.json / generation_config.json (JSON), tokenizer.json through
`AutoTokenizer` (never trust_remote_code), and *.safetensors. A folder with only pickled weights, or whose
config names remote code for an architecture Ember does not implement, is refused with `Unsupported`.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from ember.errors import CorruptFile, NotFound, Unsupported

DECODERS = {"llama": "ember.models.llama:LlamaDecoder", "mistral": "ember.models.llama:LlamaDecoder",
            "gpt2": "ember.models.gpt2:GPT2Decoder"}


@dataclass
class LoadedModel:
    folder: Path
    config: dict
    model: object  # LlamaDecoder | GPT2Decoder
    tokenizer: object  # transformers PreTrainedTokenizerFast
    generation_config: dict = field(default_factory=dict)

    @property
    def eos_token_ids(self) -> list[int]:
        ids = self.generation_config.get("eos_token_id", self.config.get("eos_token_id"))
        ids = [] if ids is None else ids if isinstance(ids, list) else [ids]
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids


def resolve_folder(ref_or_path, settings=None) -> Path:
    """An existing directory is used as it is; anything else is a registry reference. A LoRA adapter version
    loads as its base with the adapter merged in (cached under EMBER_HOME/merged), so every front door
    (`Engine.load`, `ember serve --model ADAPTER`, `ember generate ADAPTER`) serves adapters like models."""
    p = Path(str(ref_or_path)).expanduser()
    if p.is_dir():
        return p
    from ember.store import registry  # imported late: the storage layer is only needed for references

    info = registry.resolve(str(ref_or_path), settings=settings)
    if info.kind == "adapter":
        from ember.finetune.adapters import merged_folder

        return Path(merged_folder(info, settings))
    return Path(registry.materialize(info, settings=settings))


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise NotFound(f"{path.name} not found in {path.parent}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptFile(f"{path} is not valid JSON: {e}") from None


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        if any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth")):
            raise Unsupported(f"{folder} holds only pickled weights; Ember reads safetensors only")
        raise NotFound(f"no *.safetensors weights in {folder}")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        # Dequantised or half-precision checkpoints are computed in fp32 on the CPU.
        weights.update({k: v.float() for k, v in load_file(f).items()})
    return weights


def load_tokenizer(folder: Path):
    """None for a folder without tokenizer files (tiny test models): the engine then takes token ids only."""
    from transformers import AutoTokenizer

    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model")
    if not any((folder / n).exists() for n in names):
        return None

    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a broken tokenizer
        raise CorruptFile(f"cannot load the tokenizer in {folder}: {e}") from None


def _release_freed_memory() -> None:
    """Loading frees ~1 GB of temporaries (the unfused weights); glibc keeps it mapped unless asked."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def load_model(ref_or_path, settings=None, *, with_tokenizer: bool = True) -> LoadedModel:
    folder = resolve_folder(ref_or_path, settings)
    cfg = read_json(folder / "config.json")
    mtype = cfg.get("model_type")
    if mtype not in DECODERS:
        raise Unsupported(f"model_type {mtype!r} is not supported (supported: {', '.join(sorted(DECODERS))})")
    gen_path = folder / "generation_config.json"
    gen = read_json(gen_path) if gen_path.exists() else {}
    module, cls = DECODERS[mtype].split(":")
    decoder_cls = getattr(__import__(module, fromlist=[cls]), cls)
    try:
        model = decoder_cls(cfg, load_weights(folder))
    except KeyError as e:
        raise CorruptFile(f"{folder}: weight {e} missing for a {mtype} model") from None
    _release_freed_memory()
    tok = load_tokenizer(folder) if with_tokenizer else None
    return LoadedModel(folder, cfg, model, tok, gen)


class Int8Linear:
    """An int8 weight (per output channel scales) used as `x @ w`: activations are quantized per token
    (per row), multiplied with `torch._int_mm` (oneDNN VNNI/AMX int8 GEMM, exact int32 accumulation) and
    rescaled. Per-row activation scales keep each row independent of the rest of the batch, so a seed
    still gives the same text alone or batched, and one outlier token does not coarsen its neighbours."""

    def __init__(self, wt: torch.Tensor):
        self.scale = (wt.abs().amax(0) / 127).clamp(min=1e-8)  # [N]
        q = torch.round(wt / self.scale).clamp(-127, 127).to(torch.int8)
        self.q = q.t().contiguous().t()  # column-major [K, N]: the faster layout for _int_mm here
        self.shape = tuple(wt.shape)

    def __rmatmul__(self, x: torch.Tensor) -> torch.Tensor:
        sx = (x.abs().amax(-1, keepdim=True) / 127).clamp(min=1e-8)
        xq = (x / sx).round_().to(torch.int8)
        return torch._int_mm(xq, self.q).float().mul_(sx).mul_(self.scale)  # in place: no extra [M, N] temporaries


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


def _smooth(model, tokenizer, alpha: float = 0.5) -> None:
    """SmoothQuant: moves activation outliers into the weights, exactly (the network computes the same
    function in fp32), so per-tensor int8 activations lose less. For qkv and gate/up the per-channel
    divisor folds into the preceding RMSNorm weight; for down_proj it folds into the up-projection."""
    from ember.engine.kv_cache import make_batch

    rec = {}
    for i, L in enumerate(model.layers):
        for name in ("wqkv", "wgu", "wdown"):
            rec[i, name] = _ActMax(getattr(L, name))
            setattr(L, name, rec[i, name])
    ids = tokenizer(CALIBRATION)["input_ids"] if tokenizer is not None else list(range(1, 200))
    with torch.inference_mode():
        model.forward(make_batch([], [(0, 0, ids)], [True]), model.make_cache(1, len(ids)))
    for i, L in enumerate(model.layers):
        for name in ("wqkv", "wgu", "wdown"):
            setattr(L, name, rec[i, name].w)

        def scales(name):
            r = rec[i, name]
            return (r.amax.clamp(min=1e-5) ** alpha / r.w.abs().amax(1).clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)

        s = scales("wqkv")
        L.ln1, L.wqkv = L.ln1 / s, L.wqkv * s[:, None]
        s = scales("wgu")
        L.ln2, L.wgu = L.ln2 / s, L.wgu * s[:, None]
        s = scales("wdown")
        inter = L.wdown.shape[0]
        L.wgu = L.wgu.clone()
        L.wgu[:, inter:] /= s[None, :]  # up-projection columns: silu(g) * (u / s)
        L.wdown = L.wdown * s[:, None]


def quantize_model(model, mode: str, tokenizer=None) -> None:
    """Replaces the projection matrices of a Llama-family decoder with Int8Linear (in place), after
    SmoothQuant calibration on a short built-in text."""
    if mode != "int8":
        raise Unsupported(f"quantization {mode!r} is not supported (only 'int8')")
    if getattr(model, "family", None) != "llama":
        raise Unsupported("int8 weights are implemented for the Llama family only")
    _smooth(model, tokenizer)
    for layer in model.layers:
        for name in ("wqkv", "wo", "wgu", "wdown"):
            setattr(layer, name, Int8Linear(getattr(layer, name)))
    if model.embed is None:  # tied: the embedding lookup keeps reading the fp32 matrix
        model.embed = model.lm_head.t()
    model.lm_head = Int8Linear(model.lm_head)
