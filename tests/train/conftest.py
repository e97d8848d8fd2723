"""Fixtures for the training tests: small corpora from the Python standard library, trained once per session.

- `stdlib_files`: a dozen stdlib source files (the GPT corpus).
- `gpt_assets`: (tokenizer folder, prepared data folder) for that corpus, byte-level BPE of 1024 tokens.
- `bert_assets`: (tokenizer folder, prepared data folder) of stdlib docstrings (one paragraph a line, one
  document per module), WordPiece of 2000 tokens.
- `tiny_gpt(out, **overrides)`: the key=value list of a very small GPT run on `gpt_assets`.
"""

import ast
import sysconfig
from pathlib import Path

import pytest

STDLIB = Path(sysconfig.get_paths()["stdlib"])
GPT_FILES = ["textwrap", "shlex", "fnmatch", "glob", "bisect", "heapq", "string", "abc", "contextlib",
             "functools", "argparse", "pathlib"]
DOC_MODULES = ["argparse", "pathlib", "functools", "contextlib", "textwrap", "shlex", "string", "abc", "heapq",
               "bisect", "fnmatch", "glob", "dataclasses", "enum", "typing", "subprocess", "shutil",
               "tempfile", "logging/__init__", "collections/__init__"]


@pytest.fixture(scope="session")
def stdlib_files() -> list[Path]:
    return [STDLIB / f"{n}.py" for n in GPT_FILES]


@pytest.fixture(scope="session")
def gpt_assets(tmp_path_factory, stdlib_files):
    from ember.train.data import prepare
    from ember.train.tokenizer import load_tokenizer, train_tokenizer

    root = tmp_path_factory.mktemp("gpt-assets")
    train_tokenizer(stdlib_files, "bpe", 1024, root / "tok")
    tok, ref = load_tokenizer(root / "tok")
    prepare(stdlib_files, tok, root / "data", tokenizer_ref=ref)
    return root / "tok", root / "data"


def docstring_corpus(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for name in DOC_MODULES:
        tree = ast.parse((STDLIB / f"{name}.py").read_text())
        paras = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                for p in (doc or "").split("\n\n"):
                    p = " ".join(p.split())
                    if len(p) > 20:
                        paras.append(p)
        f = folder / (name.replace("/", "_") + ".txt")
        f.write_text("\n".join(paras) + "\n")
        files.append(f)
    return files


@pytest.fixture(scope="session")
def bert_assets(tmp_path_factory):
    from ember.train.data import prepare
    from ember.train.tokenizer import load_tokenizer, train_tokenizer

    root = tmp_path_factory.mktemp("bert-assets")
    files = docstring_corpus(root / "corpus")
    train_tokenizer(files, "wordpiece", 2000, root / "tok")
    tok, ref = load_tokenizer(root / "tok")
    prepare(files, tok, root / "data", tokenizer_ref=ref)
    return root / "tok", root / "data"


@pytest.fixture
def tiny_gpt(gpt_assets):
    tok, data = gpt_assets

    def overrides(out, **kw):
        base = dict(data=data, tokenizer=tok, name="tiny", out=out, register=False, progress=False,
                    max_steps=6, batch_size=8, seq_len=32, hidden_size=64, intermediate_size=128,
                    num_layers=2, num_heads=4, lr=1e-3, eval_batches=2, seed=0)
        base.update(kw)
        return [f"{k}={v}" for k, v in base.items()]
    return overrides
