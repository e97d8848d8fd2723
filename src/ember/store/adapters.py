"""LoRA adapters in the registry: merge one into its base, as a cached folder or as a new model version.

    ember models merge my-sft:1 --name my-sft-merged     # a full model version whose parent is my-sft:1
    ember serve --model my-sft                           # the engine loads merged_folder("my-sft")

An adapter version holds PEFT's adapter_config.json + adapter_model.safetensors; its registry parent is the
base model version. `merged_folder` materializes the base, applies the adapter with PEFT's
`merge_and_unload`, and saves a plain HF folder (weights + the base's tokenizer, chat template and
generation config) under EMBER_HOME/merged/, keyed by both manifests, so every later load is a cache hit
and any process (server replicas sharing EMBER_HOME) reuses it. For a non-adapter reference it is just
`registry.materialize`. It lives in store/ beside `importers.py` (which also turns weights into a new version)
so that `models/loading.py` can load an adapter reference without reaching up into fine-tuning.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from ember.config import Settings, get_settings
from ember.errors import CorruptFile, InvalidRequest
from ember.store import registry

# Base-model files that travel into a merged folder unchanged (everything but the weights).
_CARRIED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
            "chat_template.json", "generation_config.json", "vocab.txt", "merges.txt", "vocab.json",
            "tokenizer.model", "added_tokens.json")


def _key(adapter: registry.VersionInfo, base: registry.VersionInfo) -> str:
    manifest = "\n".join(f"{p} {d}" for info in (base, adapter) for p, d in sorted(info.files.items()))
    return f"{adapter.name}-{adapter.number}-{hashlib.sha256(manifest.encode()).hexdigest()[:12]}"


def base_of(adapter: registry.VersionInfo, settings: Settings | None = None) -> registry.VersionInfo:
    if adapter.kind != "adapter":
        raise InvalidRequest(f"{adapter.ref} is a {adapter.kind}, not an adapter")
    if not adapter.parent:
        raise CorruptFile(f"adapter {adapter.ref} has no parent (base model) version")
    return registry.resolve(adapter.parent, settings)


def merge_into(base_dir: Path, adapter_dir: Path, out: Path) -> Path:
    """Write base + adapter, merged, as a plain HF folder at `out` (which must not exist yet)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    model.save_pretrained(str(out), safe_serialization=True)
    for name in _CARRIED:
        if (base_dir / name).is_file():
            shutil.copyfile(base_dir / name, out / name)
    return out


def merged_folder(ref: str | registry.VersionInfo, settings: Settings | None = None) -> Path:
    """A plain HF folder to load `ref` from: the adapter merged into its base, or the model itself."""
    settings = settings or get_settings()
    info = ref if isinstance(ref, registry.VersionInfo) else registry.resolve(ref, settings)
    if info.kind != "adapter":
        return registry.materialize(info, settings)
    base = base_of(info, settings)
    final = settings.home / "merged" / _key(info, base)
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tmp-"))
    try:
        merge_into(registry.materialize(base, settings), registry.materialize(info, settings), tmp)
        try:
            os.replace(tmp, final)  # atomic: a concurrent merger's identical result may already be there
        except OSError:
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def merge(ref: str, name: str, settings: Settings | None = None) -> registry.VersionInfo:
    """Register adapter `ref` merged into its base as a full model version `name:N` (parent = the adapter)."""
    settings = settings or get_settings()
    registry.check_name(name)
    info = registry.resolve(ref, settings)
    base = base_of(info, settings)
    folder = merged_folder(info, settings)
    lineage = {**info.metadata.get("lineage", {}), "merged_from": info.ref, "base": base.ref}
    meta = {"task": info.metadata.get("task", "text-generation"), "lineage": lineage}
    return registry.register_folder(folder, name, kind="model", parent=info.ref, metadata=meta,
                                    settings=settings)
