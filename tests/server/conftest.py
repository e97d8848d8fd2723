"""Fixtures for the server tests (`start_server`, which starts real `ember serve` subprocesses on free ports,
is in tests/conftest.py).

- `server`: one shared server per module over the session's catalog home (both bundled models). It only
  reads that home: the models are materialized by this process first (smollm2_dir / minilm_dir).
"""

import pytest


@pytest.fixture(scope="module")
def server(start_server, catalog_home, smollm2_dir, minilm_dir):
    return start_server(catalog_home, "--max-slots", 32, "--max-queue", 256)
