"""The registry on SQLite and PostgreSQL (`db_url` runs each test on both; see tests/conftest.py)."""

import sqlite3
from pathlib import Path

import pytest

from ember.config import Settings
from ember.errors import InvalidRequest, NotFound
from ember.store import db, registry


def test_versions_are_numbered_and_latest_follows(db_url, ember_home, tiny_model_dir):
    v1 = registry.register_folder(tiny_model_dir, "tiny")
    v2 = registry.register_folder(tiny_model_dir, "tiny", tags={"stage": "dev"})
    assert (v1.ref, v2.ref) == ("tiny:1", "tiny:2")
    assert registry.resolve("tiny").ref == "tiny:2"
    assert registry.resolve("tiny@latest").ref == "tiny:2"
    assert registry.resolve("tiny:1").ref == "tiny:1"
    assert v2.tags == {"stage": "dev"}
    # identical content shares blobs
    assert v1.files == v2.files and "model.safetensors" in v1.files
    meta = v1.metadata
    assert meta["architecture"] == "LlamaForCausalLM" and meta["dtype"] == "float32"
    assert meta["context_length"] == 256 and meta["parameter_count"] > 0 and meta["chat_template"] is False


def test_alias_moves_are_kept_in_order_and_shown_on_every_read_path(db_url, ember_home, tiny_model_dir):
    for _ in range(3):
        registry.register_folder(tiny_model_dir, "tiny")
    registry.set_alias("tiny", "production", 1)
    registry.set_alias("tiny", "production", "tiny:2")
    history = registry.alias_history("tiny", "production")
    assert [(h["from"], h["to"]) for h in history] == [(None, 1), (1, 2)]
    assert registry.resolve("tiny@production").aliases == ["production"]
    assert registry.resolve("tiny:2").aliases == ["production"]
    listed = {v.ref: v.aliases for v in registry.list_versions()}
    assert listed == {"tiny:1": [], "tiny:2": ["production"], "tiny:3": ["latest"]}


def test_bad_and_missing_references(db_url, ember_home, tiny_model_dir):
    registry.register_folder(tiny_model_dir, "tiny")
    for bad in ["", "a b", "x:y", "x@", "../x", "x:1:2"]:
        with pytest.raises(InvalidRequest):
            registry.resolve(bad)
    for missing in ["nope", "tiny:9", "tiny@prod"]:
        with pytest.raises(NotFound):
            registry.resolve(missing)
    with pytest.raises(NotFound):
        registry.set_alias("tiny", "prod", 7)


def test_tags_and_delete(db_url, ember_home, tiny_model_dir):
    registry.register_folder(tiny_model_dir, "tiny")
    registry.register_folder(tiny_model_dir, "tiny")
    assert registry.tag("tiny:1", {"owner": "ml"}).tags == {"owner": "ml"}
    registry.delete("tiny:2")
    assert registry.resolve("tiny").ref == "tiny:1"  # latest falls back
    assert registry.verify() == []
    registry.delete("tiny")
    assert registry.list_versions() == []
    assert list((ember_home / "blobs").iterdir()) == []  # unreferenced blobs freed


def test_lineage_through_parents(db_url, ember_home, tiny_model_dir):
    registry.register_folder(tiny_model_dir, "base")
    registry.register_folder(tiny_model_dir, "child", parent="base")
    grand = registry.register_folder(tiny_model_dir, "grandchild", parent="child:1")
    assert grand.parent == "child:1" and grand.lineage == ["child:1", "base:1"]


def test_database_is_wal_and_migrated_to_head(ember_home, tiny_model_dir):
    registry.register_folder(tiny_model_dir, "tiny")
    con = sqlite3.connect(ember_home / "ember.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))
    head = ScriptDirectory.from_config(cfg).get_current_head()  # the newest migration, whichever it is
    assert con.execute("SELECT version_num FROM alembic_version").fetchone()[0] == head


def test_other_database_url(tmp_path, tiny_model_dir):
    s = Settings(home=tmp_path / "h", database_url=f"sqlite:///{tmp_path / 'elsewhere.db'}")
    assert registry.register_folder(tiny_model_dir, "tiny", settings=s).ref == "tiny:1"
    assert (tmp_path / "elsewhere.db").exists() and not (tmp_path / "h" / "ember.db").exists()
    db.dispose_all()


def test_materializing_a_version_another_process_just_installed_keeps_their_folder(ember_home, tiny_model_dir,
                                                                                    monkeypatch):
    """Two torchrun ranks materialize the same base at once. The one that finishes second must not delete the
    folder the first installed (the first is already loading from it); it uses that folder instead."""
    from ember.store import importers

    importers.import_path(tiny_model_dir, "tiny")
    first = registry.materialize("tiny")
    inode = first.stat().st_ino
    real = registry._complete
    calls = []

    def not_yet_on_first_look(folder, info):  # this process looked before the other one renamed its folder in
        calls.append(folder)
        return False if len(calls) == 1 else real(folder, info)

    monkeypatch.setattr(registry, "_complete", not_yet_on_first_look)
    second = registry.materialize("tiny")
    assert second == first and second.stat().st_ino == inode
    assert (second / "config.json").is_file()
    assert not [p for p in second.parent.iterdir() if p.name.startswith(".")]  # its own copy was cleaned up


def test_an_incomplete_materialized_folder_is_replaced(ember_home, tiny_model_dir):
    from ember.store import importers

    importers.import_path(tiny_model_dir, "tiny")
    folder = registry.materialize("tiny")
    (folder / "config.json").unlink()
    assert registry.materialize("tiny") == folder and (folder / "config.json").is_file()
