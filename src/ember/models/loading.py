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
    """An existing directory is used as it is; anything else is a registry reference."""
    p = Path(str(ref_or_path)).expanduser()
    if p.is_dir():
        return p
    from ember.store import registry  # imported late: the storage layer is only needed for references

    return Path(registry.materialize(str(ref_or_path), settings=settings))


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
    tok = load_tokenizer(folder) if with_tokenizer else None
    return LoadedModel(folder, cfg, model, tok, gen)
