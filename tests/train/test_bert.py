"""BERT pretraining: pair construction and masking, both losses logged, MLM accuracy above chance."""

import numpy as np
import pytest

from ember.train import bert, checkpoint as ckpt
from ember.train.bert import BertPairs
from ember.train.data import Prepared
from ember.train.tokenizer import load_tokenizer


def _pairs(bert_assets, seq_len=64, n=16, seed=0, rank=0, world=1):
    tok, _ = load_tokenizer(bert_assets[0])
    data = Prepared.open(bert_assets[1])
    starts, docs = data.lines("train")
    return tok, BertPairs(data.tokens("train"), starts, docs, tok, seq_len, n, seed, rank, world)


def test_pairs_masking_and_nsp_balance(bert_assets):
    tok, src = _pairs(bert_assets, n=400)
    b = src.batch(0)
    ids, labels, types, attn = b["input_ids"], b["labels"], b["token_type_ids"], b["attention_mask"]
    assert ids.shape == labels.shape == (400, 64)
    assert (ids[:, 0] == tok.cls_token_id).all()
    nsp = b["next_sentence_label"].float().mean().item()
    assert 0.4 < nsp < 0.6  # B is the real continuation about half the time
    selected = labels != -100
    lengths = attn.sum(1)
    # 15% of the non-special tokens: ([CLS], 2x[SEP] and padding excluded)
    frac = (selected.sum(1).float() / (lengths - 3).float()).mean().item()
    assert frac == pytest.approx(0.15, abs=0.02)
    masked = ids[selected] == tok.mask_token_id
    kept = ids[selected] == labels[selected]
    assert masked.float().mean().item() == pytest.approx(0.8, abs=0.04)
    assert kept.float().mean().item() == pytest.approx(0.1, abs=0.03)  # (+ the rare random == original)
    assert (types.sum(1) > 0).all() and ((types == 1) <= (attn == 1)).all()
    # the same sample numbers give the same batch; rank r of 2 gets the r-th half of the global batch
    _, again = _pairs(bert_assets, n=400)
    assert (again.batch(0)["input_ids"] == ids).all()
    _, r1 = _pairs(bert_assets, n=400, rank=1, world=2)
    assert (r1.batch(0)["input_ids"] == ids[200:]).all()


def test_bert_learns_and_logs_both_losses(tmp_path, bert_assets):
    tok_dir, data_dir = bert_assets
    out = tmp_path / "run"
    summary = bert.main(None, [f"data={data_dir}", f"tokenizer={tok_dir}", "name=b", f"out={out}",
                               "register=false", "progress=false", "max_steps=80", "seq_len=64",
                               "batch_size=32", "lr=1e-3", "warmup_steps=10", "eval_every=40",
                               "eval_batches=4", "hidden_size=128", "intermediate_size=256"])
    recs = ckpt.read_metrics(out / "metrics.jsonl")
    train = [r for r in recs if "loss" in r]
    for r in train:
        assert {"mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc"} <= set(r)
        assert r["loss"] == pytest.approx(r["mlm_loss"] + r["nsp_loss"], rel=1e-4)
    val = [r for r in recs if "val_loss" in r]
    assert [r["step"] for r in val] == [40, 80]
    final = val[-1]
    vocab = 2000
    first = np.mean([r["mlm_acc"] for r in train[:5]])
    last = np.mean([r["mlm_acc"] for r in train[-10:]])
    print(f"bert: mlm_acc first {first:.3f} last {last:.3f} val {final['val_mlm_acc']:.3f}; "
          f"nsp_acc val {final['val_nsp_acc']:.3f}; val_mlm_loss {final['val_mlm_loss']:.3f} "
          f"val_nsp_loss {final['val_nsp_loss']:.3f}")
    assert final["val_mlm_acc"] > 20 / vocab  # chance is 1/vocab
    assert last > first
    assert final["val_mlm_loss"] < np.log(vocab) - 1.0
    assert summary["final_val_loss"] == pytest.approx(final["val_loss"])
    from transformers import BertForPreTraining

    model = BertForPreTraining.from_pretrained(out / "final")
    assert model.config.vocab_size == vocab
