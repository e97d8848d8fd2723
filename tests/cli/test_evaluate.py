"""`ember eval` and `ember models promote` through the real console script (tiny model, fresh EMBER_HOME)."""

import json


def test_eval_compare_report_promote(tiny_model, run_cli, tmp_path):
    task = tmp_path / "t.yaml"
    (tmp_path / "d.jsonl").write_text('{"q": "Say hi", "a": "hi"}\n{"q": "Say yes", "a": "yes"}\n')
    task.write_text("data: d.jsonl\nprompt: '{q}'\nchat: true\nreference: a\nmax_tokens: 3\n"
                    "metrics: [bleu, exact_match]\n")
    r = run_cli("eval", "tiny:1", "--task", task, "--json")
    assert r.returncode == 0, r.stderr
    run = json.loads(r.stdout)
    assert set(run["metrics"]) == {"bleu", "exact_match"} and run["ref"] == "tiny:1"

    # compare runs what B lacks, then prints both side by side
    r = run_cli("eval", "compare", "tiny:1", "tiny:2", "--task", task, "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert {x["metric"] for x in rows} == {"bleu", "exact_match"} and all(x["diff"] == 0 for x in rows)
    r = run_cli("eval", "compare", "tiny:1", "tiny:2", "--task", task)
    assert r.returncode == 0 and "bleu" in r.stdout

    shown = json.loads(run_cli("models", "show", "tiny:1", "--json").stdout)
    assert shown["evals"][0]["metrics"] == run["metrics"]

    r = run_cli("eval", "report", "tiny:2", "--out", tmp_path / "rep", "--json")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "rep" / "report.html").read_text().count("tiny:2") >= 1
    assert (tmp_path / "rep" / "history.png").read_bytes()[:4] == b"\x89PNG"

    assert run_cli("models", "alias", "tiny@production", "1").returncode == 0
    r = run_cli("models", "promote", "tiny@production", "2", "--gate", "bleu>=current+1")
    assert r.returncode == 6  # errors.Conflict
    assert "bleu>=current+1" in r.stderr and "off by 1" in r.stderr and "stays at tiny:1" in r.stderr
    assert json.loads(run_cli("models", "show", "tiny@production", "--json").stdout)["number"] == 1
    r = run_cli("models", "promote", "tiny@production", "2", "--gate", "bleu>=current", "--gate",
                "exact_match>=current*1.0")
    assert r.returncode == 0, r.stderr
    assert json.loads(run_cli("models", "show", "tiny@production", "--json").stdout)["number"] == 2
    hist = json.loads(run_cli("models", "history", "tiny@production", "--json").stdout)
    assert [h["action"] for h in hist] == ["move", "promote_refused", "promote"]


def test_eval_errors_are_one_line(tiny_model, run_cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: d.jsonl\nprompt: '{q}'\nreferense: a\n")
    r = run_cli("eval", "tiny", "--task", bad)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "'referense'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("eval", "tiny", "--task", "builtin:nope")
    assert r.returncode == 3
    r = run_cli("models", "promote", "tiny@production", "1", "--gate", "bleu>=os.system('x')")
    assert r.returncode == 2 and "cannot parse gate" in r.stderr
