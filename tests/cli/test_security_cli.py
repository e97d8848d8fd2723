"""Security findings outside the server: keys with limits and the audit log through the real `ember` script,
the database's permissions, symlinks in imported folders, linear-time gate parsing and redaction.

    .venv/bin/python -m pytest tests/cli/test_security_cli.py -q
"""

import json
import stat
import time

import pytest

from ember.errors import InvalidRequest


def test_keys_with_limits_and_audit_trail(ember_home, run_cli, tiny_model):
    r = run_cli("keys", "create", "--name", "team", "--rpm", "60", "--tpm", "1000", "--max-parallel", "2",
                "--budget", "5000", "--budget-period", "day", "--expires", "30d", "--models", "tiny", "--json")
    assert r.returncode == 0, r.stderr
    k = json.loads(r.stdout)
    assert (k["rpm"], k["tpm"], k["max_parallel"], k["budget_tokens"], k["budget_period"], k["models"]) == \
        (60, 1000, 2, 5000, "day", ["tiny"]) and k["expires_at"]
    r = run_cli("keys", "update", k["id"], "--rpm", "0", "--models", "", "--json")
    assert r.returncode == 0, r.stderr
    u = json.loads(r.stdout)
    assert u["rpm"] is None and u["models"] is None and u["tpm"] == 1000
    shown = json.loads(run_cli("keys", "show", k["id"], "--json").stdout)
    assert shown["period_tokens"] == 0 and "key" not in shown
    assert run_cli("keys", "create", "--name", "x", "--expires", "soon").returncode == 2
    assert run_cli("models", "alias", "tiny@prod", "1", env={"EMBER_ACTOR": "alice"}).returncode == 0
    run_cli("keys", "revoke", k["id"])
    log = json.loads(run_cli("audit", "--json").stdout)
    actions = [e["action"] for e in log]
    assert actions[:4] == ["key.revoke", "alias.move", "key.update", "key.create"]
    assert log[1]["actor"] == "cli:alice" and log[1]["target"] == "tiny@prod" and log[1]["after"] == {"version": 1}
    assert log[2]["before"]["rpm"] == 60 and log[2]["after"]["rpm"] is None
    assert "model.import" in actions
    # The database holds key hashes, usage and the audit log: owner-only.
    assert stat.S_IMODE((ember_home / "ember.db").stat().st_mode) == 0o600


def test_symlink_out_of_an_imported_folder_is_refused(ember_home, tiny_model_dir, tmp_path):
    import shutil

    from ember.store import registry

    folder = tmp_path / "linked"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "README.md").symlink_to("/etc/passwd")
    with pytest.raises(InvalidRequest, match="symbolic link"):
        registry.register_folder(folder, "linked")
    (folder / "README.md").unlink()
    (folder / "README.md").write_text("inside")
    (folder / "notes.txt").symlink_to(folder / "README.md")  # a link inside the folder is fine
    assert registry.register_folder(folder, "linked").number == 1


def test_gate_parsing_is_linear_and_bounded():
    from ember.evaluate.gates import _GATE, parse_gate

    t0 = time.perf_counter()
    with pytest.raises(InvalidRequest, match="at most"):
        parse_gate("bleu>=" + "1" * 50_000 + "x")
    assert _GATE.match("bleu>=" + "1" * 50_000 + "x") is None  # the regex alone is linear too
    assert time.perf_counter() - t0 < 2.0
    assert parse_gate("perplexity<=current*1.02").k == 1.02 and parse_gate("a>=.5").value == 0.5


def test_redaction():
    from ember.server.redact import redact

    text = ("mail bob@example.com, card 4111 1111 1111 1111, not a card 4111 1111 1111 1112, call +1 415-555-0100, "
            "ip 10.0.0.5, iban GB82 WEST 1234 5698 7654 32, key sk-abcdefghijklmnop1234, year 2026")
    out = redact(text)
    for secret in ("bob@example.com", "4111 1111 1111 1111", "415-555-0100", "10.0.0.5", "GB82", "sk-abc"):
        assert secret not in out
    assert "4111 1111 1111 1112" in out and "2026" in out  # Luhn-invalid numbers and plain numbers stay
    t0 = time.perf_counter()
    for evil in ("1" * 100_000, "a@" * 50_000, "1." * 50_000, "+(1) " * 20_000, "a:" * 50_000):
        redact(evil)
    assert time.perf_counter() - t0 < 10.0
