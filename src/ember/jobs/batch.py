"""Batch jobs (`POST /v1/batches`): every line of an uploaded JSONL sent through the server's own routes.

    curl -F purpose=batch -F file=@requests.jsonl localhost:8000/v1/files
    curl -X POST localhost:8000/v1/batches -d '{"input_file_id": "file-...", "endpoint": "/v1/chat/completions",
                                                "completion_window": "24h"}'

A line is {"custom_id", "method": "POST", "url": "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings",
"body": {...}}. Each body goes through the very route an interactive request takes (in-process ASGI call:
the same validation, sampling and response shapes), so a greedy batch line gives exactly the synchronous
response. Inside `ember serve` the batch feeds the served engines with at most EMBER_BATCH_CONCURRENCY
(default 4) requests in flight: the engine's slots stay mostly free for interactive traffic. Under
`ember worker` (no server) the job's child process builds the same app around the models the lines name.

Results are appended in input order to the job's `results.jsonl` (fsynced line by line); after a restart
the job continues after the last complete line, so no line is run or written twice. At the end the results
are split into the output file (2xx) and the error file, both /v1/files (purpose `batch_output`).
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
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


def _internal(app):
    """The app as an in-process caller sees it: requests carry `ember.internal` in their ASGI scope, which no
    HTTP client can set, so the server's auth lets them through (the job was authorised when it was created)."""
    async def call(scope, receive, send):
        scope["ember.internal"] = True
        await app(scope, receive, send)
    return call


async def _one(client, line: str) -> dict:
    req = json.loads(line)
    rec = {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": req.get("custom_id"), "response": None,
           "error": None}
    why = _line_problem(req)
    if why:
        rec["error"] = {"code": "invalid_request", "message": why}
        return rec
    r = await client.post(req["url"], json=req["body"])
    try:
        body = r.json()
    except ValueError:
        body = {"error": {"message": r.text[:2000], "type": "internal_error"}}
    rec["response"] = {"status_code": r.status_code, "request_id": r.headers.get("x-request-id"), "body": body}
    if r.status_code >= 400:
        err = body.get("error") or {}
        rec["error"] = {"code": err.get("code") or err.get("type"), "message": err.get("message")}
    return rec


async def process(app, lines: list[str], results: Path, concurrency: int, on_progress=None) -> None:
    """Run lines [done:] through `app` with at most `concurrency` in flight; append results in input order."""
    import httpx

    start = done_lines(results)
    transport = httpx.ASGITransport(app=_internal(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://ember-batch", timeout=None) as client:
        out = await asyncio.to_thread(open, results, "a")
        pending: list[asyncio.Task] = []
        nxt = start
        try:
            for i in range(start, len(lines)):
                while nxt < len(lines) and len(pending) < concurrency:
                    pending.append(asyncio.create_task(_one(client, lines[nxt])))
                    nxt += 1
                rec = await pending.pop(0)
                # the write and fsync leave the event loop free (inside `ember serve` it serves everyone)
                await asyncio.to_thread(_append, out, json.dumps(rec) + "\n")
                if on_progress is not None:
                    await on_progress(i + 1)
        finally:
            for t in pending:
                t.cancel()
            out.close()


def _append(out, line: str) -> None:
    out.write(line)
    out.flush()
    os.fsync(out.fileno())


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


def _progress(job: dict, total: int, settings):
    from ember.store import jobs

    async def report(done: int) -> None:
        if done % 20 == 0 or done == total:
            await asyncio.to_thread(jobs.set_result, job["id"], {"request_counts": {"total": total, "done": done}},
                                    settings)
    return report


class InServer:
    """A batch job run on the serving process's event loop; looks like a Popen to the worker (poll, kill)."""

    pid = None

    def __init__(self, job: dict, folder: Path, app, loop, settings):
        self.job, self.folder, self.app, self.settings = job, folder, app, settings
        self.error: str | None = None
        self.concurrency = int(os.environ.get("EMBER_BATCH_CONCURRENCY", "4"))
        self.future = asyncio.run_coroutine_threadsafe(self._main(), loop)

    async def _main(self) -> None:
        lines = await asyncio.to_thread(prepare, self.folder, self.job, self.settings)
        await process(self.app, lines, self.folder / "results.jsonl", self.concurrency,
                      _progress(self.job, len(lines), self.settings))
        from ember.store import jobs

        result = await asyncio.to_thread(finish, self.folder, self.job, self.settings)
        await asyncio.to_thread(jobs.set_result, self.job["id"], result, self.settings)

    def poll(self) -> int | None:
        if not self.future.done():
            return None
        if self.future.cancelled():
            return -9
        exc = self.future.exception()
        if exc is not None:
            self.error = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            return 1
        return 0

    def kill(self) -> None:
        self.future.cancel()


def run_in_child(ctx) -> dict:
    """Under `ember worker`: build the server app around the models the lines name, then run the batch."""
    from ember.server.app import ServeConfig, _load_models, create_app

    lines = prepare(ctx.folder, ctx.job, ctx.settings)
    models = validate_file(ctx.folder / "input.jsonl")["models"]
    app = create_app(ServeConfig(models=models or [], settings=ctx.settings))
    _load_models(app)
    if app.state.load_error:
        raise InvalidRequest(f"cannot load the batch's models: {app.state.load_error}", param="model")
    try:
        concurrency = int(os.environ.get("EMBER_BATCH_CONCURRENCY") or app.state.config.max_slots)
        asyncio.run(process(app, lines, ctx.folder / "results.jsonl", concurrency,
                            _progress(ctx.job, len(lines), ctx.settings)))
    finally:
        app.state.pool.close()
    return finish(ctx.folder, ctx.job, ctx.settings)
