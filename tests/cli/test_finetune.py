"""`ember finetune ...` from the command line: bad data fails before any model is read, naming the lines;
a fine-tune runs under torchrun (2 processes, gloo) like pretraining and registers one version with lineage."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_bad_sft_data_fails_fast_with_line_numbers(ember_home, tmp_path, run_cli):
    rows = [{"prompt": "a", "completion": "b"}, "{oops", {"prompt": "a"}, {"completion": "c"}]
    data = _jsonl(tmp_path / "train.jsonl", rows)
    # the registry is empty: the data check must come first, or this would say "model not found"
    proc = run_cli("finetune", "sft", "--base", "smollm2-135m-instruct", "--data", data, "--name", "x")
    assert proc.returncode == 2, proc.stderr
    assert "3 of 4 lines are bad" in proc.stderr
    assert "train.jsonl:2:" in proc.stderr and "train.jsonl:3:" in proc.stderr and "train.jsonl:4:" in proc.stderr


def test_bad_options_and_missing_files(ember_home, tmp_path, run_cli):
    proc = run_cli("finetune", "classify", "--base", "minilm-l6-v2", "--data", tmp_path / "nope.jsonl",
                   "--name", "c")
    assert proc.returncode == 3 and "not found" in proc.stderr
    data = _jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}])
    proc = run_cli("finetune", "sft", "--base", "m", "--data", data, "--name", "x", "--method", "qlora")
    assert proc.returncode == 2 and "--method" in proc.stderr
    conll = tmp_path / "t.conll"
    conll.write_text("just words\nwithout\ntags\n")
    proc = run_cli("finetune", "tag", "--base", "minilm-l6-v2", "--data", conll, "--name", "t")
    assert proc.returncode == 2 and "t.conll:2:" in proc.stderr


@pytest.mark.slow
def test_classify_under_torchrun(ember_home, minilm_dir, tmp_path, run_cli):
    from ember.store import importers, registry

    importers.import_path(minilm_dir, "minilm-l6-v2")
    rows = [{"text": f"{w} number {i}", "label": lab} for i in range(16)
            for w, lab in (("sunny", "weather"), ("goal", "sports"))]
    data = _jsonl(tmp_path / "d.jsonl", rows)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    args = [torchrun, "--nproc-per-node", "2", "-m", "ember", "finetune", "classify", "--base", "minilm-l6-v2",
            "--data", data, "--eval-data", data, "--name", "tr-clf", "--max-steps", "3", "--batch-size", "8",
            "--max-length", "16", "--no-progress", "--json"]
    proc = subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    versions = registry.list_versions("tr-clf")
    assert len(versions) == 1  # rank 0 registers, once
    lin = versions[0].metadata["lineage"]
    assert lin["world_size"] == 2 and lin["steps"] == 3 and lin["final_eval_loss"] is not None
    assert versions[0].parent == registry.resolve("minilm-l6-v2").ref
