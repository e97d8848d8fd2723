"""lm-evaluation-harness against `ember serve`: its `local-completions` backend (echo + logprobs requests of
token ids, the remote tokenizer through /tokenizer_info and /tokenize) runs a multiple-choice task shipped in
tests/data/lm_eval_choice offline, and agrees with `ember eval` and with transformers.

    .venv/bin/python -m pytest tests/server/test_lm_eval.py -q
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

MODEL = "smollm2-135m-instruct"
DATA = Path(__file__).parent.parent / "data" / "lm_eval_choice"

pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def lm_eval_run(start_server, catalog_home, smollm2_dir, tmp_path_factory):
    served = start_server(catalog_home, "--model", MODEL, "--max-slots", 4)
    out = tmp_path_factory.mktemp("lm-eval")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(out / "hf"),
           "OPENAI_API_KEY": "unused"}
    args = [sys.executable, "-m", "lm_eval", "--model", "local-completions",
            "--model_args", f"model={MODEL},base_url={served.v1}/completions,tokenizer_backend=remote,"
                            "num_concurrent=1,max_retries=1,timeout=300",
            "--tasks", "ember_choice", "--include_path", str(DATA), "--output_path", str(out / "results"),
            "--log_samples"]
    r = subprocess.run(args, cwd=DATA, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    results = json.loads(next((out / "results").rglob("results_*.json")).read_text())
    samples = [json.loads(x) for x in next((out / "results").rglob("samples_ember_choice_*.jsonl")).read_text()
               .splitlines()]
    return results["results"]["ember_choice"], sorted(samples, key=lambda s: s["doc_id"])


def test_lm_eval_accuracy_equals_ember_eval(lm_eval_run, run_cli, catalog_home):
    metrics, samples = lm_eval_run
    assert len(samples) == 10
    r = run_cli("eval", MODEL, "--task", DATA / "ember_task.yaml", "--no-store", "--json",
                env={"EMBER_HOME": str(catalog_home)})
    assert r.returncode == 0, r.stderr
    ours = json.loads(r.stdout)["metrics"]
    assert ours["acc"] == pytest.approx(metrics["acc,none"], abs=1e-9)
    assert ours["acc_norm"] == pytest.approx(metrics["acc_norm,none"], abs=1e-9)
    assert ours["acc"] >= 0.5  # easy questions: the model is far better than chance (0.25)


def test_lm_eval_loglikelihoods_equal_transformers(lm_eval_run, smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    _, samples = lm_eval_run
    for s in samples:
        args = s["arguments"]
        if isinstance(args, dict):  # lm-eval 0.4.9+: {"gen_args_0": {"arg_0": context, "arg_1": continuation}}
            args = [(a["arg_0"], a["arg_1"]) for _, a in sorted(args.items(), key=lambda kv: int(kv[0][9:]))]
        assert len(args) == len(s["resps"]) == 4
        for (ctx, cont), resp in zip(args, s["resps"]):
            ctx_ids = tok(ctx, add_special_tokens=False).input_ids
            whole = tok(ctx + cont, add_special_tokens=False).input_ids
            with torch.inference_mode():
                lp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
            ref = sum(lp[i - 1, whole[i]].item() for i in range(len(ctx_ids), len(whole)))
            assert float(resp[0][0]) == pytest.approx(ref, abs=1e-4)  # logged as a string
