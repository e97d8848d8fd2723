"""GPT pretraining end to end: torchrun DDP equals one process, SIGKILL + --resume, quality on stdlib code,
registry lineage."""

import ast
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ember.train import checkpoint as ckpt, gpt
from ember.train.data import Prepared

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def _losses(out):
    return {r["step"]: r["loss"] for r in ckpt.read_metrics(out / "metrics.jsonl") if "loss" in r}


@pytest.mark.parametrize("sharding", [[], ["--fsdp"]], ids=["ddp", "fsdp2"])
def test_two_process_run_matches_one_process(tmp_path, tiny_gpt, sharding):
    args = tiny_gpt(tmp_path / "ddp", max_steps=4)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "ember", "train", "gpt", *args, *sharding]
    proc = subprocess.run(cmd, env={**ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = gpt.main(None, tiny_gpt(tmp_path / "one", max_steps=4))
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "ddp")
    assert list(a) == list(b) == [1, 2, 3, 4]
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-5)
    ddp = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert ddp["final_val_loss"] == pytest.approx(single["final_val_loss"], rel=1e-5)
    assert a[4] < a[1]


KILLER = textwrap.dedent("""
    # Run `ember train gpt` and SIGKILL ourselves in the middle of writing the step-4 checkpoint.
    import os, signal, sys
    from ember.train import checkpoint
    real = checkpoint.save_file
    def save_file(tensors, path, *a, **kw):
        real(tensors, path, *a, **kw)
        if "step-00000004" in str(path):
            os.kill(os.getpid(), signal.SIGKILL)
    checkpoint.save_file = save_file
    from ember.cli.main import main
    main(["train", "gpt", *sys.argv[1:]])
""")


def test_sigkill_then_resume_ends_at_the_same_loss(tmp_path, tiny_gpt):
    args = tiny_gpt(tmp_path / "run", checkpoint_every=2, eval_every=3)
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    proc = subprocess.run([sys.executable, str(killer), *args], env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]
    root = tmp_path / "run" / "checkpoints"
    assert (root / "latest").read_text() == "step-00000002"  # the half-written step 4 is not visible
    assert [p.name for p in root.glob(".tmp-step-00000004-*")]  # ... though its pieces are on disk
    assert ckpt.latest(tmp_path / "run") == root / "step-00000002"
    proc = subprocess.run([sys.executable, "-m", "ember", "train", "gpt", *args, "--resume"], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = json.loads((tmp_path / "run" / "result.json").read_text())
    straight = gpt.main(None, tiny_gpt(tmp_path / "straight", checkpoint_every=2, eval_every=3))
    assert resumed["step"] == straight["step"] == 6
    assert resumed["final_loss"] == pytest.approx(straight["final_loss"], rel=1e-5)
    assert resumed["final_val_loss"] == pytest.approx(straight["final_val_loss"], rel=1e-5)
    assert not list(root.glob(".tmp-*"))  # the resumed run cleaned up the leftovers
    assert list(_losses(tmp_path / "run")) == [1, 2, 3, 4, 5, 6]


def _unigram_entropy(tokens: np.ndarray) -> float:
    counts = np.bincount(np.asarray(tokens, dtype=np.int64)).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_gpt_tiny_learns_python_and_is_registered(tmp_path, ember_home, gpt_assets):
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from ember.store import registry

    tok_dir, data_dir = gpt_assets
    tok_version = registry.register_folder(tok_dir, "stdlib-bpe", kind="tokenizer")
    config = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "gpt-tiny.yaml")
    summary = gpt.main(config, [f"data={data_dir}", "tokenizer=stdlib-bpe", f"out={tmp_path / 'run'}",
                                "progress=false"])
    data = Prepared.open(data_dir)
    entropy = _unigram_entropy(data.tokens("val"))
    val_loss = summary["final_val_loss"]
    print(f"gpt-tiny: val_loss {val_loss:.3f} nats vs unigram entropy {entropy:.3f} nats")
    assert val_loss < entropy - 1.0

    v = registry.resolve("gpt-tiny")
    assert summary["ref"] == v.ref == "gpt-tiny:1"
    lineage = v.metadata["lineage"]
    assert lineage["tokenizer"] == tok_version.ref
    assert lineage["dataset_digest"] == data.digest
    assert lineage["config"]["max_steps"] == 300 and lineage["config"]["arch"] == "llama"
    assert lineage["final_val_loss"] == pytest.approx(val_loss)

    folder = registry.materialize(v.ref)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = PreTrainedTokenizerFast.from_pretrained(folder)
    ids = tok("def ", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=tok.eos_token_id)
    text = tok.decode(out[0])
    print("greedy:", repr(text))
    header = text.split("\n")[0]
    assert re.match(r"def [A-Za-z_]\w*\(", header), text
    assert _parses_as_def(header), text


def _parses_as_def(header: str) -> bool:
    """True if the line, possibly cut short by max_new_tokens, is the start of a valid `def` statement."""
    for end in ("", ":", "):", ")):"):
        try:
            ast.parse(header.rstrip() + end + "\n    pass\n")
            return True
        except SyntaxError:
            continue
    return False
