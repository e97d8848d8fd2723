"""Fixtures for the fine-tuning tests (data generators are in ft_synth.py).

- `ft_home`: one EMBER_HOME per session holding both bundled models (imported from the catalog home's
  materialized folders, so the GGUF conversion is not paid again); `use_ft_home` points EMBER_HOME at it.
"""

import pytest


@pytest.fixture(scope="session")
def ft_home(catalog_home, smollm2_dir, minilm_dir, tmp_path_factory):
    from ember.config import Settings
    from ember.store import importers

    home = tmp_path_factory.mktemp("ft-home")
    settings = Settings(home=home)
    importers.import_path(smollm2_dir, "smollm2-135m-instruct", settings=settings)
    importers.import_path(minilm_dir, "minilm-l6-v2", settings=settings)
    return home


@pytest.fixture
def use_ft_home(ft_home, monkeypatch):
    from ember.store import db

    monkeypatch.setenv("EMBER_HOME", str(ft_home))
    monkeypatch.delenv("EMBER_DATABASE_URL", raising=False)
    db.dispose_all()
    yield ft_home
    db.dispose_all()
