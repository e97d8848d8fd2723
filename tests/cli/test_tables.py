"""Tables in narrow terminals: references, names and ids are never cut; less important columns give way.

    .venv/bin/python -m pytest tests/cli/test_tables.py -q
"""

import json

import pytest

LONG = "smollm2-135m-instruct-sft-lora-r8"  # as long as names people give fine-tunes


def _lines_fit(out: str, width: int) -> None:
    assert all(len(line) <= width for line in out.splitlines()), out


@pytest.fixture
def long_named(ember_home, tiny_chat_dir):
    from ember.store import registry

    registry.register_folder(tiny_chat_dir, LONG)
    registry.register_folder(tiny_chat_dir, LONG)
    registry.register_folder(tiny_chat_dir, "tiny")
    registry.set_alias(LONG, "production", 1)
    return LONG


@pytest.mark.parametrize("width", [80, 60])
def test_models_list_and_show_keep_every_reference_whole(run_cli, long_named, width):
    env = {"COLUMNS": str(width)}
    r = run_cli("models", "list", env=env)
    assert r.returncode == 0, r.stderr
    _lines_fit(r.stdout, width)
    for ref in (f"{LONG}:1", f"{LONG}:2", "tiny:1"):
        assert ref in r.stdout, r.stdout
    assert "@production" in r.stdout and "…" not in r.stdout
    wide = run_cli("models", "list", env={"COLUMNS": "200"}).stdout
    assert "LlamaForCausalLM" in wide and "created" in wide  # nothing is left out when there is room

    r = run_cli("models", "show", f"{LONG}@production", env=env)
    assert r.returncode == 0, r.stderr
    _lines_fit(r.stdout, width)
    assert f"{LONG}:1" in r.stdout and "…" not in r.stdout
    files = json.loads(run_cli("models", "show", f"{LONG}:1", "--json").stdout)["files"]
    for path, digest in files.items():
        assert path in r.stdout
        # the digest is folded over lines, never cut: all of it is there
        assert digest in "".join(line.strip("│ ┃") for line in r.stdout.splitlines() if "│" in line
                                 for line in [line.split("│")[-2]])


def test_keys_list_at_60_columns(run_cli, ember_home):
    name = "nightly-eval-pipeline"
    assert run_cli("keys", "create", "--name", name, "--scopes", "inference,admin").returncode == 0
    r = run_cli("keys", "list", env={"COLUMNS": "60"})
    assert r.returncode == 0, r.stderr
    _lines_fit(r.stdout, 60)
    key_id = json.loads(run_cli("keys", "list", "--json").stdout)[0]["id"]
    assert name in r.stdout and key_id in r.stdout and "active" in r.stdout


def test_eval_tables_at_60_columns(run_cli, long_named, tmp_path):
    task = tmp_path / "t.yaml"
    (tmp_path / "d.jsonl").write_text('{"q": "Say hi", "a": "hi"}\n')
    task.write_text("data: d.jsonl\nprompt: '{q}'\nchat: true\nreference: a\nmax_tokens: 2\n"
                    "metrics: [bleu, exact_match]\n")
    env = {"COLUMNS": "60"}
    r = run_cli("eval", f"{LONG}:2", "--task", task, env=env)
    assert r.returncode == 0, r.stderr
    _lines_fit(r.stdout, 60)
    assert f"{LONG}:2" in r.stdout and "exact_match" in r.stdout
    r = run_cli("eval", "runs", f"{LONG}:2", env=env)
    assert r.returncode == 0, r.stderr
    _lines_fit(r.stdout, 60)
    cells = "".join(r.stdout.replace("│", "").split())  # the metrics column may wrap
    assert "exact_match=" in cells and "bleu=" in cells
