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
from ember.models import cpu_kernels
from ember.models.native_decode import NativeInt8Decode
from ember.models.packed import onednn_available, pack_weights

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
        eos = self.tokenizer.eos_token_id if self.tokenizer is not None else None
        if eos is not None and eos not in ids:
            ids.append(eos)
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
        from ember.store.adapters import merged_folder

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


def _map_tied_embedding(model, folder: Path) -> None:
    """A tied Llama's packed LM head cannot be indexed, so the embedding lookup needs the matrix apart
    (pack_weights copies it: 113 MB for SmolLM2). When the file holds it in fp32, the lookup reads the
    file's lazily mapped tensor instead: only the rows of tokens actually seen become resident."""
    from safetensors import safe_open

    if getattr(model, "family", None) != "llama" or model.embed is not None:
        return
    name = "model.embed_tokens.weight"
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            if name in fh.keys():
                t = fh.get_tensor(name)
                if t.dtype == torch.float32 and tuple(t.shape) == tuple(model.lm_head.shape)[::-1]:
                    model.embed = t
                return


def load_model(ref_or_path, settings=None, *, with_tokenizer: bool = True, quantize: str | None = None) -> LoadedModel:
    """quantize="int8": int8 projections (models/int8.py). Whatever stays fp32 is then packed for oneDNN."""
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
    tok = load_tokenizer(folder) if with_tokenizer else None
    if onednn_available() or quantize:  # else the tied head stays a plain matrix, the lookup reads its columns
        _map_tied_embedding(model, folder)  # before int8, which smooths and quantizes the head
    if quantize:
        from ember.models.int8 import quantize_model

        quantize_model(model, quantize, tok)
    if hasattr(model, "fold_attention_scale"):
        model.fold_attention_scale()
    pack_weights(model)
    cpu_kernels.library()  # built here, once per machine and logged, rather than inside the first decode step
    if quantize and getattr(model, "family", None) == "llama" and NativeInt8Decode.supports(model):
        model.native = NativeInt8Decode(model)  # after fold_attention_scale: the table points at final tensors
    _release_freed_memory()
    return LoadedModel(folder, cfg, model, tok, gen)
