"""Usage errors, `--version` and shell completion of the real `ember` console script.

    .venv/bin/python -m pytest tests/cli/test_usage.py -q

A mistake on the command line is the user's: click's usage line and message on stderr, exit 2, never
"internal error". One case per verb group (and per kind of mistake), each a real subprocess.
"""

import pytest

CASES = [
    # (argv, text the message must contain)
    (["bogus"], "No such command 'bogus'"),
    (["models", "lst"], "Did you mean 'list'?"),
    (["models", "list", "--bogus"], "No such option: --bogus"),
    (["models", "show"], "Missing argument"),
    (["generate"], "Missing argument"),
    (["generate", "m", "hi", "--temprature", "0"], "No such option: --temprature"),
    (["chat", "m", "--bogus"], "No such option: --bogus"),
    (["batch", "m"], "Missing argument"),
    (["serve", "--prot", "1"], "No such option: --prot"),
    (["keys", "list", "--bogus"], "No such option: --bogus"),
    (["keys", "revok", "k"], "Did you mean 'revoke'?"),
    (["keys", "create"], "Missing option '--name'"),
    (["tokenizer", "train"], "Missing argument"),
    (["data", "prepare", "x", "--bogus"], "No such option: --bogus"),
    (["train", "gpt", "--bogus"], "No such option: --bogus"),
    (["train", "gtp"], "No such command 'gtp'"),
    (["finetune", "sft"], "Missing option '--base'"),
    (["finetune", "classfy"], "Did you mean 'classify'?"),
    (["eval", "runs"], "Missing argument"),
    (["eval", "m", "--bogus"], "No such option: --bogus"),
    (["eval", "compare", "a"], "Missing argument"),
]


@pytest.mark.parametrize("argv,message", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_usage_errors_exit_2_with_usage_on_stderr(run_cli, ember_home, argv, message):
    r = run_cli(*argv)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.startswith("Usage: ember"), r.stderr
    assert message in r.stderr
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_a_real_ember_error_keeps_its_own_exit_code(run_cli, ember_home):
    r = run_cli("models", "show", "no-such-model")
    assert r.returncode == 3 and r.stderr.startswith("error:") and "Usage" not in r.stderr


def test_cli_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, ember.cli.main; print('torch' in sys.modules, 'transformers' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120)
    assert r.stdout.split() == ["False", "False"], r.stderr


def test_version(run_cli):
    from ember import __version__

    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"ember {__version__}"


def test_shell_completion(run_cli, tmp_path):
    r = run_cli("--show-completion", "bash")
    assert r.returncode == 0 and "_EMBER_COMPLETE=complete_bash" in r.stdout
    # What bash asks when the user presses TAB after `ember models li` / `ember models l`.
    r = run_cli(env={"_EMBER_COMPLETE": "complete_bash", "COMP_WORDS": "ember models li", "COMP_CWORD": "2"})
    assert r.stdout.split() == ["list"]
    r = run_cli(env={"_EMBER_COMPLETE": "complete_bash", "COMP_WORDS": "ember models l", "COMP_CWORD": "2"})
    assert r.stdout.split() == ["list", "load"]
    r = run_cli("--install-completion", "bash", env={"HOME": str(tmp_path), "SHELL": "/bin/bash"})
    assert r.returncode == 0 and (tmp_path / ".bash_completions" / "ember.sh").exists()
