"""The shared training loop: schedule, accumulation, checkpoints, resume, metrics; driven through a tiny GPT."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from ember.train import checkpoint as ckpt, gpt
from ember.train.loop import LoopSettings, lr_factor


def _losses(out):
    return {r["step"]: r["loss"] for r in ckpt.read_metrics(out / "metrics.jsonl") if "loss" in r}


def test_warmup_then_cosine_to_min():
    s = LoopSettings(out="x", max_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, s) == pytest.approx(0.1) and lr_factor(9, s) == pytest.approx(1.0)
    assert lr_factor(10, s) == pytest.approx(1.0)
    assert lr_factor(60, s) == pytest.approx(0.55)
    assert lr_factor(110, s) == pytest.approx(0.1)
    assert all(lr_factor(k, s) >= lr_factor(k + 1, s) for k in range(10, 110))


def test_grad_accumulation_matches_the_full_batch(tmp_path, tiny_gpt):
    gpt.main(None, tiny_gpt(tmp_path / "a", max_steps=3))
    gpt.main(None, tiny_gpt(tmp_path / "b", max_steps=3, grad_accum=2))
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert a.keys() == b.keys() == {1, 2, 3}
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-5)


class Interrupt(Exception):
    pass


def test_resume_continues_exactly(tmp_path, tiny_gpt, monkeypatch):
    full = gpt.main(None, tiny_gpt(tmp_path / "full", checkpoint_every=3, eval_every=3))
    real_save = ckpt.save

    def save_then_die(out, step, *a, **kw):
        path = real_save(out, step, *a, **kw)
        if step == 3:
            raise Interrupt()
        return path

    monkeypatch.setattr(ckpt, "save", save_then_die)
    with pytest.raises(Interrupt):
        gpt.main(None, tiny_gpt(tmp_path / "cut", checkpoint_every=3, eval_every=3))
    monkeypatch.setattr(ckpt, "save", real_save)
    resumed = gpt.main(None, tiny_gpt(tmp_path / "cut", checkpoint_every=3, eval_every=3, resume=True))
    assert resumed["step"] == full["step"] == 6
    assert resumed["final_loss"] == pytest.approx(full["final_loss"], rel=1e-6)
    assert resumed["final_val_loss"] == pytest.approx(full["final_val_loss"], rel=1e-6)
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "cut")
    assert list(b) == [1, 2, 3, 4, 5, 6]  # no step logged twice after the resume
    assert all(a[k] == pytest.approx(b[k], rel=1e-6) for k in a)


def test_checkpoint_contents_are_safe_formats(tmp_path, tiny_gpt):
    res = gpt.main(None, tiny_gpt(tmp_path / "run", checkpoint_every=2, keep_checkpoints=2, eval_every=2))
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000004", "step-00000006"]
    assert (root / "latest").read_text() == "step-00000006"
    last = root / "step-00000006"
    weights = load_file(str(last / "model.safetensors"))
    assert "model.embed_tokens.weight" in weights
    trainer = torch.load(last / "trainer.pt", weights_only=True)
    assert set(trainer) == {"optimizer", "scheduler", "rng"} and trainer["scheduler"]["last_epoch"] == 6
    state = json.loads((last / "state.json").read_text())
    assert state["step"] == 6 and state["data"] == {"pos": 6}
    recs = ckpt.read_metrics(tmp_path / "run" / "metrics.jsonl")
    vals = [r for r in recs if "val_loss" in r]
    assert [r["step"] for r in vals] == [2, 4, 6]
    assert vals[-1]["val_ppl"] == pytest.approx(math.exp(vals[-1]["val_loss"]))
    assert res["final_val_loss"] == vals[-1]["val_loss"]
    assert all(r["tokens_per_s"] > 0 for r in recs if "loss" in r)
    assert (tmp_path / "run" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert model.config.vocab_size == 1024 and model.config.num_hidden_layers == 2


def test_leftover_temp_folders_are_ignored(tmp_path, tiny_gpt):
    gpt.main(None, tiny_gpt(tmp_path / "run", max_steps=2, checkpoint_every=1))
    root = tmp_path / "run" / "checkpoints"
    half = root / ".tmp-step-00000009-1"  # what a kill during a write leaves behind
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"partial")
    assert ckpt.latest(tmp_path / "run") == root / "step-00000002"
    (root / "latest").unlink()  # even without the pointer, only complete folders count
    assert ckpt.latest(tmp_path / "run") == root / "step-00000002"
