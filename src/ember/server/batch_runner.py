"""Running a batch job's lines through the server app, in `ember serve` or in a job's child process.

    ember serve                                   # batches run here, next to interactive traffic
    python -m ember.server.batch_runner JOB_ID    # what `ember worker` starts for a batch job

Each line's body goes through the very route an interactive request takes (an in-process ASGI call: the
same validation, sampling and response shapes), so a greedy batch line gives exactly the synchronous
response. Inside `ember serve` the batch feeds the served engines with at most EMBER_BATCH_CONCURRENCY
(default 4) requests in flight, and with one while interactive requests are running or waiting (`process`,
`shared`), so most of the engine's slots and steps stay with interactive traffic; the server
hands the worker `in_server(app, loop)` for that. Under `ember worker` (no server) the job's child process
builds the same app around the models the lines name. Results go to the job folder (jobs/batch.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

from ember.errors import InvalidRequest
from ember.jobs.batch import _line_problem, done_lines, finish, prepare, validate_file
from ember.store import jobs


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


async def process(app, lines: list[str], results: Path, concurrency: int, on_progress=None,
                  shared: bool = False) -> None:
    """Run lines [done:] through `app` with at most `concurrency` in flight; append results in input order.

    `shared`: the app also serves interactive requests. While any is running or waiting, the batch starts no
    new line until its own in-flight lines are down to one: no batch prefill competes with theirs, and the
    batch still moves (it never starves).
    """
    import httpx

    def limit() -> int:
        if not shared:
            return concurrency
        mine = sum(not t.done() for t in pending)
        everyone = sum(m.admission.running + m.admission.waiting for m in app.state.pool.all())
        return 1 if everyone > mine else concurrency

    start = done_lines(results)
    transport = httpx.ASGITransport(app=_internal(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://ember-batch", timeout=None) as client:
        out = await asyncio.to_thread(open, results, "a")
        pending: list[asyncio.Task] = []
        nxt = start
        try:
            for i in range(start, len(lines)):
                while nxt < len(lines) and len(pending) < concurrency and \
                        sum(not t.done() for t in pending) < limit():
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


def _progress(job: dict, total: int, settings):
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
                      _progress(self.job, len(lines), self.settings), shared=True)
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


def run_in_child(job: dict, ctx) -> dict:
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


def in_server(app, loop, settings):
    """The worker's runner for batch jobs inside `ember serve`: (job, folder) -> a Popen-like InServer."""
    return lambda job, folder: InServer(job, folder, app, loop, settings)


if __name__ == "__main__":
    from ember.jobs.run import main

    sys.exit(main(sys.argv[1], runner=run_in_child))
