"""What Ember accepts from a Hugging Face folder, and the metadata it reads from one without loading weights.

    ember models import ./my-model --name my-model      # a folder of safetensors + config + tokenizer

Only safe formats enter the store: safetensors, JSON, tokenizer files, Jinja chat templates, text. Pickled
weights (`*.bin`, `*.pt`, `*.pth`, `*.ckpt`, `*.pkl`) and Python files (`auto_map` remote code) never do.
"""

import json
import struct
from collections import Counter
from pathlib import Path

from ember.errors import CorruptFile, InvalidRequest, NotFound, Unsupported

SAFE_SUFFIXES = {".safetensors", ".json", ".txt", ".jinja", ".model", ".md", ".yaml", ".yml", ".png", ".jsonl"}
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".npy", ".npz", ".h5", ".msgpack"}
_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I8": "int8",
                "U8": "uint8", "I32": "int32", "I64": "int64", "BOOL": "bool"}


def safe_files(folder: Path, *, require_weights: bool = True) -> list[Path]:
    """Relative paths of the files to store; refuses folders whose weights are only pickles."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFound(f"no such folder: {folder}")
    files = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file() and not _hidden(p, folder))
    for rel in files:
        _check_link(folder, rel)
    weights = [p for p in files if p.suffix == ".safetensors"]
    pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES]
    if require_weights and not weights:
        if pickles:
            raise Unsupported(f"{folder} holds only pickled weights ({pickles[0]}); Ember loads safetensors "
                              "only: convert it with safetensors first")
        raise Unsupported(f"{folder} holds no *.safetensors weights")
    return [p for p in files if p.suffix in SAFE_SUFFIXES or p.name in ("LICENSE", "NOTICE")]


def _check_link(folder: Path, rel: Path) -> None:
    """A symlink may only point inside the folder (or, for a Hugging Face cache snapshot, into that repo's
    blobs/): a link to /etc/passwd or ~/.ssh must never be imported."""
    path = folder / rel
    if not any((folder / Path(*rel.parts[: i + 1])).is_symlink() for i in range(len(rel.parts))):
        return
    target = path.resolve()
    root = folder.resolve()
    allowed = [root]
    if root.parent.name == "snapshots":
        allowed.append(root.parent.parent / "blobs")
    if not any(target.is_relative_to(a) for a in allowed):
        raise InvalidRequest(f"{rel} is a symbolic link to a file outside the folder; refusing to import it "
                             "(copy the file in instead)")


def _hidden(p: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in p.relative_to(root).parts)


def safetensors_header(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                raise ValueError("header too large")
            return json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as e:
        raise CorruptFile(f"{path.name} is not a valid safetensors file ({e})") from None


def describe(folder: Path) -> dict:
    """Architecture, parameter count, dtype, context length and chat template presence of a HF folder."""
    folder = Path(folder)
    meta: dict = {}
    cfg_path = folder / "config.json"
    if cfg_path.exists():
        try:
            cfg = json.loads(cfg_path.read_text())
        except ValueError as e:
            raise CorruptFile(f"config.json is not valid JSON ({e})") from None
        archs = cfg.get("architectures") or []
        meta["architecture"] = archs[0] if archs else cfg.get("model_type")
        meta["model_type"] = cfg.get("model_type")
        ctx = cfg.get("max_position_embeddings") or cfg.get("n_positions") or cfg.get("n_ctx")
        if ctx:
            meta["context_length"] = int(ctx)
    params, dtypes = 0, Counter()
    for st in sorted(folder.rglob("*.safetensors")):
        for name, info in safetensors_header(st).items():
            if name == "__metadata__":
                continue
            n = 1
            for d in info["shape"]:
                n *= d
            params += n
            dtypes[_DTYPE_NAMES.get(info["dtype"], info["dtype"])] += n
    if dtypes:
        meta["parameter_count"] = params
        meta["dtype"] = dtypes.most_common(1)[0][0]
    meta["chat_template"] = has_chat_template(folder)
    return meta


def has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").exists() or (folder / "chat_template.json").exists():
        return True
    tc = folder / "tokenizer_config.json"
    if tc.exists():
        try:
            return bool(json.loads(tc.read_text()).get("chat_template"))
        except ValueError:
            return False
    return False
