"""Uploaded files checked for their purpose before any job may use them (POST /v1/files).

    curl -F purpose=fine-tune -F file=@train.jsonl localhost:8000/v1/files

A fine-tune file is read with the fine-tuning formats' own validators, every line must be good (a job
would skip bad ones), and the error names each bad line. This lives in jobs/ because the server may not
import fine-tuning code; the jobs layer is how the server reaches it.
"""

from __future__ import annotations

import json
from pathlib import Path

from ember.errors import InvalidRequest


def validate(path: Path, purpose: str) -> dict:
    """Check a file for its purpose; returns metadata stored with it. Bad lines: InvalidRequest naming them."""
    if purpose == "fine-tune":
        return _fine_tune(path)
    if purpose == "batch":
        from ember.jobs.batch import validate_file

        return validate_file(path)
    if purpose == "evals":
        return _evals(path)
    if purpose == "train":
        try:
            with open(path, encoding="utf-8") as fh:
                lines = sum(1 for _ in fh)
        except UnicodeDecodeError:
            raise InvalidRequest("a training corpus must be UTF-8 text", param="file") from None
        return {"lines": lines}
    return {}


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.strip():
                return line.strip()
    raise InvalidRequest("the file is empty", param="file")


def _fine_tune(path: Path) -> dict:
    from ember.finetune import formats

    if not _first_line(path).startswith("{"):
        from ember.finetune.tag import read_conll

        data = read_conll(path, max_bad_fraction=0.0)
        if data.bad:
            raise InvalidRequest(f"{len(data.bad)} bad line(s) in {path.name}:\n"
                                 + "\n".join(f"  {path.name}:{n}: {why}" for n, why in data.bad[:20]), param="file")
        return {"format": "conll", "lines": len(data.sentences)}
    with open(path, encoding="utf-8", errors="replace") as fh:
        kind = "sft"
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and {"text", "label"} <= rec.keys():
                kind = "classify"
            break
    # Every line must be good at upload (training would skip bad ones): no bad fraction is tolerated.
    data = formats.read_jsonl(path, kind, max_bad_fraction=0.0)
    return {"format": data.format, "lines": len(data.records)}


def _evals(path: Path) -> dict:
    import yaml

    if path.suffix in (".yaml", ".yml"):
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise InvalidRequest(f"{path.name} is not valid YAML: {e}", param="file") from None
        if not isinstance(doc, dict):
            raise InvalidRequest(f"{path.name}: a task file is a mapping of keys to values", param="file")
        return {"format": "task"}
    bad, n = [], 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            n += 1
            try:
                ok = isinstance(json.loads(line), dict)
            except ValueError:
                ok = False
            if not ok:
                bad.append(f"  {path.name}:{lineno}: not a JSON object")
    if bad or not n:
        raise InvalidRequest(f"{len(bad)} bad line(s) in {path.name}:\n" + "\n".join(bad[:20]) if bad
                             else "the file is empty", param="file")
    return {"format": "jsonl", "lines": n}
