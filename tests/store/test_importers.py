import pytest

from ember.config import Settings
from ember.errors import CorruptFile, NotFound, Unsupported
from ember.store import importers, registry


def test_pull_is_a_noop_the_second_time(catalog_home):
    s = Settings(home=catalog_home)
    before = [v.ref for v in registry.list_versions(settings=s)]
    again = importers.pull("smollm2-135m-instruct", s)
    assert again.ref == "smollm2-135m-instruct:1"
    assert [v.ref for v in registry.list_versions(settings=s)] == before


def test_catalog_metadata(catalog_home):
    s = Settings(home=catalog_home)
    smol = registry.resolve("smollm2-135m-instruct", s)
    m = smol.metadata
    assert m["architecture"] == "LlamaForCausalLM" and m["dtype"] == "float32"
    assert m["context_length"] == 8192 and m["chat_template"] is True and m["license"] == "apache-2.0"
    assert 130e6 < m["parameter_count"] < 140e6
    assert m["source"]["file"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and len(m["source"]["digest"]) == 64
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(smol.files)
    mini = registry.resolve("minilm-l6-v2", s)
    assert mini.metadata["model_type"] == "bert" and "1_Pooling/config.json" in mini.files


def test_unknown_catalog_name(ember_home):
    with pytest.raises(NotFound, match="smollm2-135m-instruct"):
        importers.pull("gpt-5")


def test_pickle_only_folder_is_refused(ember_home, pickle_only_dir):
    with pytest.raises(Unsupported, match="pickled"):
        importers.import_path(pickle_only_dir, "bad")
    assert registry.list_versions() == []


def test_pickles_and_code_never_enter_the_store(ember_home, tiny_model_dir, tmp_path):
    import shutil

    d = tmp_path / "mixed"
    shutil.copytree(tiny_model_dir, d)
    (d / "pytorch_model.bin").write_bytes(b"pickle")
    (d / "modeling_evil.py").write_text("import os")
    v = importers.import_path(d, "mixed")
    assert "pytorch_model.bin" not in v.files and "modeling_evil.py" not in v.files
    assert "model.safetensors" in v.files


def test_corrupt_gguf_is_a_clear_error(ember_home, tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(CorruptFile, match="broken.gguf"):
        importers.import_path(bad, "broken")
    assert registry.list_versions() == []
    assert not any((ember_home / "tmp").glob("gguf-*"))


def test_wrong_file_type_is_unsupported(ember_home, tmp_path):
    f = tmp_path / "weights.onnx"
    f.write_bytes(b"x")
    with pytest.raises(Unsupported):
        importers.import_path(f, "x")
