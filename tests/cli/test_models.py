"""`ember models ...` through the real console script: exit codes, one-line errors, atomicity under SIGKILL."""

import json
import os
import signal
import subprocess
import time

from ember.store.importers import CATALOG, catalog_path


def _one_line_error(proc):
    err = proc.stderr.strip()
    assert proc.returncode != 0 and err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_errors_are_one_line_with_distinct_exit_codes(run_cli, ember_home, tmp_path, pickle_only_dir):
    env = {"EMBER_HOME": str(ember_home)}
    missing = run_cli("models", "show", "nosuch", env=env)
    assert "not found" in _one_line_error(missing) and missing.returncode == 3
    bad_ref = run_cli("models", "show", "no such!", env=env)
    assert "invalid model reference" in _one_line_error(bad_ref) and bad_ref.returncode == 2
    no_file = run_cli("models", "import", tmp_path / "nope.gguf", "--name", "x", env=env)
    assert "no such file" in _one_line_error(no_file) and no_file.returncode == 3
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    corrupt = run_cli("models", "import", tmp_path / "junk.gguf", "--name", "x", env=env)
    assert "junk.gguf" in _one_line_error(corrupt) and corrupt.returncode == 4
    pickled = run_cli("models", "import", pickle_only_dir, "--name", "x", env=env)
    assert "pickled" in _one_line_error(pickled) and pickled.returncode == 5


def test_alias_history_and_json_everywhere(run_cli, ember_home, tiny_model_dir):
    env = {"EMBER_HOME": str(ember_home)}
    for _ in range(2):
        assert run_cli("models", "import", tiny_model_dir, "--name", "tiny", env=env).returncode == 0
    run_cli("models", "alias", "tiny@production", "1", env=env, check=True)
    run_cli("models", "alias", "tiny@production", "2", env=env, check=True)
    hist = json.loads(run_cli("models", "history", "tiny@production", "--json", env=env, check=True).stdout)
    assert [(h["from"], h["to"]) for h in hist] == [(None, 1), (1, 2)]
    shown = json.loads(run_cli("models", "show", "tiny@production", "--json", env=env, check=True).stdout)
    assert shown["ref"] == "tiny:2" and sorted(shown["aliases"]) == ["latest", "production"]
    listed = json.loads(run_cli("models", "list", "--json", env=env, check=True).stdout)
    assert [(v["ref"], v["aliases"]) for v in listed] == [("tiny:1", []), ("tiny:2", ["latest", "production"])]
    tagged = json.loads(run_cli("models", "tag", "tiny:1", "team=nlp", "--json", env=env, check=True).stdout)
    assert tagged["tags"] == {"team": "nlp"}


def test_flipped_byte_makes_verify_fail_naming_the_digest(run_cli, ember_home, tiny_model_dir):
    env = {"EMBER_HOME": str(ember_home)}
    v = json.loads(run_cli("models", "import", tiny_model_dir, "--name", "tiny", "--json", env=env,
                           check=True).stdout)
    assert run_cli("models", "verify", env=env).returncode == 0
    digest = v["files"]["model.safetensors"]
    blob = ember_home / "blobs" / f"sha256-{digest}"
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    bad = run_cli("models", "verify", env=env)
    assert bad.returncode == 4 and digest in bad.stderr and "Traceback" not in bad.stderr
    out = run_cli("models", "export", "tiny", ember_home.parent / "out", env=env)
    assert out.returncode == 4 and digest in out.stderr and not (ember_home.parent / "out").exists()


def test_sigkill_during_import_leaves_nothing_visible(run_cli, ember_bin, ember_home, tiny_model_dir):
    env = {**os.environ, "EMBER_HOME": str(ember_home)}
    run_cli("models", "import", tiny_model_dir, "--name", "tiny", env=env, check=True)
    before = run_cli("models", "list", "--json", env=env, check=True).stdout
    gguf = catalog_path(CATALOG["smollm2-135m-instruct"])
    proc = subprocess.Popen([ember_bin, "models", "import", str(gguf), "--name", "smol"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp = ember_home / "tmp"
    deadline = time.monotonic() + 300
    # Kill while the 538 MB weights are being written into the blob store: the riskiest moment.
    while proc.poll() is None and time.monotonic() < deadline:
        if _big_blob_in_progress(tmp):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "import finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run_cli("models", "list", "--json", env=env, check=True).stdout == before
    verified = run_cli("models", "verify", env=env)
    assert verified.returncode == 0, verified.stderr
    assert all(len(p.name) == 71 for p in (ember_home / "blobs").iterdir())  # only whole sha256-<hex> blobs


def _big_blob_in_progress(tmp) -> bool:
    """A temp blob over 1 MB is being written (files come and go under us: a vanished one is skipped)."""
    try:
        names = list(tmp.iterdir()) if tmp.exists() else []
    except FileNotFoundError:
        return False
    for p in names:
        try:
            if p.name.startswith("blob-") and p.stat().st_size > 1 << 20:
                return True
        except FileNotFoundError:
            continue
    return False


def test_concurrent_imports_both_succeed(ember_bin, ember_home, tiny_model_dir):
    env = {**os.environ, "EMBER_HOME": str(ember_home)}
    procs = [subprocess.Popen([ember_bin, "models", "import", str(tiny_model_dir), "--name", "tiny", "--json"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [r[1] for r in results]
    refs = sorted(json.loads(out)["ref"] for out, _ in results)
    assert refs == ["tiny:1", "tiny:2", "tiny:3"]
    listed = subprocess.run([ember_bin, "models", "list", "--json"], env=env, capture_output=True, text=True)
    assert len(json.loads(listed.stdout)) == 3
