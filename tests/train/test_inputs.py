"""Tokenizers, data preparation and config validation (everything that happens before a training step)."""

import json

import numpy as np
import pytest

from ember.errors import InvalidRequest, NotFound
from ember.train import gpt
from ember.train.config import load_config
from ember.train.data import Prepared, prepare
from ember.train.tokenizer import load_tokenizer, train_and_register


def test_bpe_roundtrips_python_source(gpt_assets):
    tok, _ = load_tokenizer(gpt_assets[0])
    text = "def f(x):\n    return x + 1  # ünïcode\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert len(tok) == 1024 and tok.eos_token == "<|endoftext|>"


def test_wordpiece_has_bert_specials(bert_assets):
    tok, _ = load_tokenizer(bert_assets[0])
    for t in ("[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]"):
        assert t in tok.get_vocab()
    enc = tok("hello world", "second part")
    assert enc["input_ids"][0] == tok.cls_token_id and enc["input_ids"][-1] == tok.sep_token_id


def test_tokenizer_is_a_registry_version(ember_home, stdlib_files):
    v = train_and_register(stdlib_files[:3], "bpe", 300, "stdlib-bpe")
    assert v.ref == "stdlib-bpe:1" and v.kind == "tokenizer"
    tok, ref = load_tokenizer("stdlib-bpe")
    assert ref == "stdlib-bpe:1" and len(tok) == v.metadata["tokenizer"]["vocab_size"]
    assert train_and_register(stdlib_files[:3], "bpe", 300, "stdlib-bpe").ref == "stdlib-bpe:2"


def test_prepare_manifest_and_shards(gpt_assets, stdlib_files):
    data = Prepared.open(gpt_assets[1])
    m = data.manifest
    assert [i["path"] for i in m["inputs"]] == [str(f) for f in stdlib_files]
    assert all(len(i["sha256"]) == 64 for i in m["inputs"])
    for split in ("train", "val"):
        toks = data.tokens(split)
        assert len(toks) == m["splits"][split]["tokens"] > 0
        assert toks.dtype == np.uint16 and int(toks.max()) < m["vocab_size"]
        starts, docs = data.lines(split)
        assert len(starts) == len(docs) == m["splits"][split]["lines"]
        assert np.all(np.diff(starts) > 0)
    assert 0.05 < m["splits"]["val"]["tokens"] / m["splits"]["train"]["tokens"] < 0.2
    eos = m["eos_token_id"]
    assert int((np.asarray(data.tokens("train")) == eos).sum()) == len(stdlib_files)  # one EOS per document


def test_prepare_jsonl_and_digest_is_stable(tmp_path, gpt_assets):
    tok, _ = load_tokenizer(gpt_assets[0])
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(json.dumps({"text": f"def f{i}(x):\n    return x * {i}\n"}) for i in range(40)))
    a = prepare([src], tok, tmp_path / "a", val_every=4, chunk_lines=1)
    b = prepare([src], tok, tmp_path / "b", val_every=4, chunk_lines=1)
    assert a["digest"] == b["digest"] and a["splits"]["val"]["tokens"] > 0
    _, docs = Prepared.open(tmp_path / "a").lines("train")
    assert docs.max() == 39  # one document per JSONL record
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": "x"}\n')
    with pytest.raises(InvalidRequest, match="text"):
        prepare([bad], tok, tmp_path / "c")
    with pytest.raises(NotFound):
        prepare([tmp_path / "missing.txt"], tok, tmp_path / "d")


def test_config_unknown_key_wrong_type_missing_key(tmp_path):
    base = ["data=d", "tokenizer=t", "name=n", "out=o", "max_steps=3"]
    cfg = load_config(gpt.GPTConfig, None, base + ["lr=1e-3", "fsdp=true", "num_kv_heads=null"])
    assert cfg.lr == 1e-3 and cfg.fsdp is True and cfg.num_kv_heads is None
    with pytest.raises(InvalidRequest, match="'hiden_size'.*hidden_size") as e:
        load_config(gpt.GPTConfig, None, base + ["hiden_size=64"])
    assert e.value.param == "hiden_size"
    with pytest.raises(InvalidRequest, match="'max_steps' must be int") as e:
        load_config(gpt.GPTConfig, None, base[:-1] + ["max_steps=lots"])
    assert e.value.param == "max_steps"
    with pytest.raises(InvalidRequest, match="'arch' must be one of"):
        load_config(gpt.GPTConfig, None, base + ["arch=rnn"])
    with pytest.raises(InvalidRequest, match="'name' is required"):
        load_config(gpt.GPTConfig, None, ["data=d", "tokenizer=t", "out=o", "max_steps=3"])
    f = tmp_path / "c.yaml"
    f.write_text("data: d\ntokenizer: t\nname: n\nout: o\nmax_steps: 3\nbatch_size: 2.5\n")
    with pytest.raises(InvalidRequest, match="'batch_size' must be int"):
        load_config(gpt.GPTConfig, f)


def test_shipped_configs_have_the_common_keys():
    from pathlib import Path

    import yaml

    from ember.train import bert

    root = Path(__file__).resolve().parents[2] / "configs"
    for name, cls in (("gpt-tiny.yaml", gpt.GPTConfig), ("bert-tiny.yaml", bert.BertTrainConfig)):
        raw = yaml.safe_load((root / name).read_text())
        assert {"data", "tokenizer", "name", "max_steps", "seed", "out"} <= set(raw)
        cfg = load_config(cls, root / name, ["max_steps=7", "seed=3", "out=elsewhere"])
        assert (cfg.max_steps, cfg.seed, cfg.out) == (7, 3, "elsewhere")


def test_vocab_mismatch_fails_before_training(tmp_path, tiny_gpt, bert_assets):
    with pytest.raises(InvalidRequest, match="'vocab_size'") as e:
        gpt.main(None, tiny_gpt(tmp_path / "run", vocab_size=999))
    assert e.value.param == "vocab_size"
    # data prepared with the BERT tokenizer (2000 tokens) does not fit the GPT tokenizer (1024)
    with pytest.raises(InvalidRequest, match="'data'"):
        gpt.main(None, tiny_gpt(tmp_path / "run", data=bert_assets[1]))
    with pytest.raises(InvalidRequest, match="'batch_size'"):
        gpt.main(None, tiny_gpt(tmp_path / "run", batch_size=7, grad_accum=2))
    assert not (tmp_path / "run").exists()
