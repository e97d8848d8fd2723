"""`ember generate` and `ember batch` through the real console script (SmolLM2 from the catalog).

    .venv/bin/python -m pytest tests/cli/test_generate.py -q
"""

import json
import signal
import subprocess
import time


def _lines(n_good_before_bad=20, total=50):
    out = []
    for i in range(total):
        if i == n_good_before_bad:
            out.append('{"custom_id": "broken", "body": ')  # malformed JSON
        elif i % 2:
            out.append(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                                   "body": {"messages": [{"role": "user", "content": f"Say the number {i}."}],
                                            "max_tokens": 12, "temperature": 0}}))
        else:
            out.append(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/completions",
                                   "body": {"prompt": f"{i} + 1 =", "max_tokens": 12, "temperature": 0.7,
                                            "seed": i}}))
    return "\n".join(out) + "\n"


def _check(out_path):
    recs = [json.loads(x) for x in out_path.read_text().splitlines()]
    assert len(recs) == 50
    ids = [r["custom_id"] for r in recs]
    assert ids[20] == "line-21" and ids[:20] == [f"req-{i}" for i in range(20)]
    assert ids[21:] == [f"req-{i}" for i in range(21, 50)]
    errors = [r for r in recs if r["error"]]
    assert len(errors) == 1 and errors[0]["response"] is None
    ok = [r for r in recs if not r["error"]]
    assert all(r["response"]["status_code"] == 200 and r["response"]["body"]["choices"] for r in ok)
    return recs


def test_batch_keeps_order_and_isolates_a_bad_line(run_cli, smollm2_dir, tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(_lines())
    r = run_cli("batch", smollm2_dir, inp, out)
    assert r.returncode == 0, r.stderr
    _check(out)
    # A rerun over a complete output does nothing more.
    r = run_cli("batch", smollm2_dir, inp, out)
    assert r.returncode == 0 and len(out.read_text().splitlines()) == 50


def test_batch_killed_then_rerun_resumes_without_duplicates(run_cli, ember_bin, smollm2_dir, tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(_lines())
    # Two slots make the run last long enough to be killed half way.
    p = subprocess.Popen([ember_bin, "batch", str(smollm2_dir), str(inp), str(out), "--max-slots", "2"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while p.poll() is None and (not out.exists() or len(out.read_text().splitlines()) < 3):
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    before = out.read_text().splitlines()
    assert 3 <= len(before) < 50
    r = run_cli("batch", smollm2_dir, inp, out)
    assert r.returncode == 0, r.stderr
    recs = _check(out)
    assert [json.loads(x)["custom_id"] for x in before] == [x["custom_id"] for x in recs[: len(before)]]


def test_batch_scores_prompts_like_the_server(run_cli, smollm2_dir, tmp_path):
    """Lines are parsed by the server's request models: token-id prompts, echo + logprobs, max_tokens 0,
    prompt_logprobs; a bad field is an error record naming it."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    ids = tok("The capital of France is Paris").input_ids
    lines = [{"custom_id": "score", "url": "/v1/completions",
              "body": {"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 1}},
             {"custom_id": "chat", "url": "/v1/chat/completions",
              "body": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0,
                       "prompt_logprobs": 0}},
             {"custom_id": "bad", "url": "/v1/completions", "body": {"prompt": "x", "temperature": "hot"}}]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps(x) + "\n" for x in lines))
    r = run_cli("batch", smollm2_dir, inp, out)
    assert r.returncode == 0, r.stderr
    score, chat, bad = [json.loads(x) for x in out.read_text().splitlines()]
    body = score["response"]["body"]
    lp = body["choices"][0]["logprobs"]
    assert body["object"] == "text_completion" and body["usage"]["completion_tokens"] == 0
    assert lp["token_logprobs"][0] is None and len(lp["token_logprobs"]) == len(ids)
    assert all(v < 0 for v in lp["token_logprobs"][1:]) and body["choices"][0]["text"] == tok.decode(ids)
    cbody = chat["response"]["body"]
    assert cbody["object"] == "chat.completion" and cbody["prompt_logprobs"][0] is None
    assert len(cbody["prompt_logprobs"]) == cbody["usage"]["prompt_tokens"]
    assert bad["response"] is None and "temperature" in bad["error"]["message"]


def test_generate_greedy_and_errors(run_cli, smollm2_dir, tmp_path):
    r = run_cli("generate", smollm2_dir, "The capital of France is", "--max-tokens", "8", "--temperature", "0")
    assert r.returncode == 0 and "Paris" in r.stdout
    r = run_cli("generate", smollm2_dir, "x", "--temperature", "-1")
    assert r.returncode == 2 and r.stderr.startswith("error:")
    (tmp_path / "config.json").write_text('{"model_type": "mamba"}')
    r = run_cli("generate", tmp_path, "x")
    assert r.returncode == 5
