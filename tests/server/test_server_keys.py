"""API keys against a live `ember serve`: off while no key exists, on as soon as one does (or with
--require-key), 401 in OpenAI's shape without a valid key, /health and /ready always open, revocation.

    .venv/bin/python -m pytest tests/server/test_server_keys.py -q
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

EMBED = "minilm-l6-v2"
EMBER_BIN = str(Path(sys.executable).with_name("ember"))


@pytest.fixture(scope="module")
def keys_home(tmp_path_factory):
    """A home of its own (keys are written); only the small encoder is pulled into it (seconds)."""
    from ember.config import Settings
    from ember.store import importers

    home = tmp_path_factory.mktemp("keys-home")
    importers.pull(EMBED, Settings(home=home))
    return home


def _cli(home, *args):
    r = subprocess.run([EMBER_BIN, *args], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "EMBER_HOME": str(home)})
    assert r.returncode == 0, r.stderr
    return r.stdout


def _until(cond, tries=400):
    for _ in range(tries):
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_keys_switch_auth_on_and_off(start_server, keys_home):
    srv = start_server(keys_home, "--model", EMBED)
    assert httpx.get(srv.v1 + "/models").status_code == 200  # no key exists yet: open
    created = json.loads(_cli(keys_home, "keys", "create", "--name", "tests", "--json"))
    secret = created["key"]
    assert _until(lambda: httpx.get(srv.v1 + "/models").status_code == 401)
    r = httpx.post(srv.v1 + "/embeddings", json={"model": EMBED, "input": "x"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(srv.url + "/metrics").status_code == 401
    assert httpx.get(srv.url + "/health").status_code == 200 and httpx.get(srv.url + "/ready").status_code == 200
    bad = httpx.get(srv.v1 + "/models", headers={"Authorization": "Bearer ember-wrong"})
    assert bad.status_code == 401
    client = openai.OpenAI(base_url=srv.v1, api_key=secret, max_retries=0)
    assert len(client.embeddings.create(model=EMBED, input="hello").data[0].embedding) == 384
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=srv.v1, api_key="ember-nope", max_retries=0).models.list()
    _cli(keys_home, "keys", "revoke", created["id"])
    assert _until(lambda: httpx.get(srv.v1 + "/models", headers={"Authorization": f"Bearer {secret}"})
                  .status_code == 401)


def test_require_key_without_any_key(start_server, tmp_path_factory):
    from ember.config import Settings
    from ember.store import importers

    home = tmp_path_factory.mktemp("require-key-home")
    importers.pull(EMBED, Settings(home=home))
    srv = start_server(home, "--model", EMBED, "--require-key")
    r = httpx.get(srv.v1 + "/models")
    assert r.status_code == 401 and r.headers.get("www-authenticate") == "Bearer"
    assert httpx.get(srv.url + "/ready").status_code == 200
