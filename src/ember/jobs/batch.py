"""Batch jobs (`POST /v1/batches`): the input file's checks, the resumable results file, the output files.

    curl -F purpose=batch -F file=@requests.jsonl localhost:8000/v1/files
    curl -X POST localhost:8000/v1/batches -d '{"input_file_id": "file-...", "endpoint": "/v1/chat/completions",
                                                "completion_window": "24h"}'

A line is {"custom_id", "method": "POST", "url": "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings",
"body": {...}}. The lines run through the server's own routes (server/batch_runner.py, which the worker is
handed by `ember serve` or starts as the job's child process under `ember worker`).

Results are appended in input order to the job's `results.jsonl` (fsynced line by line); after a restart
the job continues after the last complete line, so no line is run or written twice. At the end the results
are split into the output file (2xx) and the error file, both /v1/files (purpose `batch_output`).
"""

from __future__ import annotations

import json
from pathlib import Path

from ember.errors import InvalidRequest

URLS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
MAX_LINES = 50_000
MAX_REPORTED = 20


def validate_file(path: Path) -> dict:
    """Check an uploaded batch file line by line; returns {lines, urls, models}. Bad lines are a 400 naming them."""
    bad, urls, models, ids, n = [], set(), set(), set(), 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            n += 1
            try:
                req = json.loads(line)
            except json.JSONDecodeError as e:
                bad.append(f"line {lineno}: not valid JSON ({e.msg})")
                continue
            why = _line_problem(req)
            if why:
                bad.append(f"line {lineno}: {why}")
                continue
            if req["custom_id"] in ids:
                bad.append(f"line {lineno}: duplicate custom_id {req['custom_id']!r}")
            ids.add(req["custom_id"])
            urls.add(req["url"])
            if isinstance(req["body"].get("model"), str):
                models.add(req["body"]["model"])
    if n == 0:
        raise InvalidRequest("the batch file has no requests", param="file")
    if n > MAX_LINES:
        raise InvalidRequest(f"the batch file has {n} requests; at most {MAX_LINES}", param="file")
    if bad:
        more = f"\n  ... and {len(bad) - MAX_REPORTED} more" if len(bad) > MAX_REPORTED else ""
        raise InvalidRequest(f"{len(bad)} bad line(s) in the batch file:\n  " + "\n  ".join(bad[:MAX_REPORTED])
                             + more, param="file")
    return {"lines": n, "urls": sorted(urls), "models": sorted(models)}


def _line_problem(req) -> str | None:
    if not isinstance(req, dict):
        return "not a JSON object"
    if not isinstance(req.get("custom_id"), str) or not req["custom_id"]:
        return "'custom_id' must be a non-empty string"
    if req.get("method", "POST") != "POST":
        return "'method' must be POST"
    if req.get("url") not in URLS:
        return f"'url' must be one of {', '.join(URLS)}"
    if not isinstance(req.get("body"), dict):
        return "'body' must be an object"
    if req["body"].get("stream"):
        return "'stream' is not allowed in a batch"
    return None


def done_lines(out: Path) -> int:
    """Complete result lines already written; a torn last line (killed mid-write) is cut off."""
    if not out.exists():
        return 0
    data = out.read_bytes()
    keep = data[: data.rfind(b"\n") + 1]
    if len(keep) != len(data):
        with open(out, "r+b") as f:
            f.truncate(len(keep))
    return keep.count(b"\n")


def counts(results: Path, total: int) -> dict:
    failed = done = 0
    if results.exists():
        for line in results.read_text().splitlines():
            done += 1
            failed += bool(json.loads(line).get("error"))
    return {"total": total, "completed": done - failed, "failed": failed}


def finish(folder: Path, job: dict, settings) -> dict:
    """Split results into the output and error files (uploaded as /v1/files); returns the job's result."""
    from ember.store import files

    results = folder / "results.jsonl"
    ok, bad = folder / "output.jsonl", folder / "errors.jsonl"
    with open(results) as src, open(ok, "w") as o, open(bad, "w") as e:
        for line in src:
            (e if json.loads(line).get("error") else o).write(line)
    out = {"request_counts": counts(results, len(_lines(folder)))}
    for key, path in (("output_file_id", ok), ("error_file_id", bad)):
        if path.stat().st_size or key == "output_file_id":
            out[key] = files.add(path, filename=f"{job['id']}_{path.name}", purpose="batch_output",
                                 owner=job["owner"], settings=settings)["id"]
    return out


def _lines(folder: Path) -> list[str]:
    return [ln for ln in (folder / "input.jsonl").read_text().splitlines() if ln.strip()]


def prepare(folder: Path, job: dict, settings) -> list[str]:
    from ember.store import files

    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "input.jsonl").exists():
        files.copy_to(job["spec"]["input_file_id"], folder / "input.jsonl", None, settings)
    return _lines(folder)
