"""Jobs pages (admin): start fine-tunes, pretraining, evaluations and batches; follow one live; cancel.

    GET  /ui/jobs                   the jobs (GET /api/jobs) and the forms that start them
    POST /ui/jobs/fine-tune         upload (POST /v1/files, validated: bad lines are named) + /v1/fine_tuning/jobs
    POST /ui/jobs/pretrain|eval|batch     /api/jobs with a YAML config, /api/jobs eval, /v1/files + /v1/batches
    GET  /ui/jobs/ID                status, events, loss curve, result; GET /ui/jobs/ID/stream is their SSE feed
    POST /ui/jobs/ID/cancel         /api/jobs/ID/cancel

These build on the jobs API (issue 16). On a server without it (/api/jobs answers 404) the pages say so.
"""

import asyncio
import json

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ember.server.console import web
from ember.server.console.client import call, error_message

router = APIRouter(include_in_schema=False)
TERMINAL = ("succeeded", "failed", "cancelled")
METHODS = ["supervised", "classification", "tagging"]
ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
MAX_EVENTS_PAGE = 1000


async def _models(request: Request) -> list[str]:
    st, body = await call(request, "GET", "/api/models")
    return [v["ref"] for v in body.get("data", []) if v.get("kind") == "model"] if st == 200 else []


def _result_ref(job: dict) -> str | None:
    r = job.get("result") or {}
    ref = r.get("fine_tuned_model") or r.get("ref") or (r.get("summary") or {}).get("ref")
    return ref if isinstance(ref, str) and ":" in ref else None


@router.get("/ui/jobs")
async def jobs(request: Request):
    s = await web.need(request, admin=True)
    st, body = await call(request, "GET", "/api/jobs")
    available = st != 404
    rows = body.get("data", []) if st == 200 else []
    for j in rows:
        j["result_ref"] = _result_ref(j)
    return web.render(request, "jobs.html", s, available=available, jobs=rows, models=await _models(request),
                      methods=METHODS, endpoints=ENDPOINTS, error=None if st in (200, 404) else error_message(body))


async def _upload(request: Request, upload, purpose: str) -> tuple[str | None, str | None]:
    """(file id, None) or (None, why): the API's validation names the bad lines."""
    if upload is None or not getattr(upload, "filename", ""):
        return None, "choose a file to upload"
    data = await upload.read()
    st, body = await call(request, "POST", "/v1/files", files={"file": (upload.filename, data)},
                          data={"purpose": purpose})
    if st == 404:
        return None, "this server has no /v1/files (the jobs API): nothing can be uploaded here"
    if st != 200:
        return None, f"{upload.filename} was refused:\n{error_message(body)}"
    return body["id"], None


@router.post("/ui/jobs/fine-tune")
async def fine_tune(request: Request):
    s = await web.need(request, admin=True)
    f = await web.form(request, s)
    file_id, why = await _upload(request, f.get("file"), "fine-tune")
    if why:
        return web.back(s, "/ui/jobs", err=f"Fine-tune not started: {why}")
    body = {"model": str(f.get("model") or ""), "training_file": file_id,
            "method": {"type": str(f.get("method") or "supervised")}}
    epochs = str(f.get("epochs") or "").strip()
    if epochs.isdigit():
        body["hyperparameters"] = {"n_epochs": int(epochs)}
    suffix = str(f.get("suffix") or "").strip()
    if suffix:
        body["suffix"] = suffix
    st, job = await call(request, "POST", "/v1/fine_tuning/jobs", json_body=body)
    if st != 200:
        return web.back(s, "/ui/jobs", err=f"Fine-tune not started: {error_message(job)}")
    return web.back(s, f"/ui/jobs/{job['id']}", msg=f"Fine-tune {job['id']} queued.")


async def _submit(request: Request, s, spec: dict, what: str):
    st, job = await call(request, "POST", "/api/jobs", json_body=spec)
    if st not in (200, 201):
        return web.back(s, "/ui/jobs", err=f"{what} not started: {error_message(job)}")
    return web.back(s, f"/ui/jobs/{job['id']}", msg=f"{what} {job['id']} queued.")


@router.post("/ui/jobs/pretrain")
async def pretrain(request: Request):
    s = await web.need(request, admin=True)
    f = await web.form(request, s)
    try:
        config = yaml.safe_load(str(f.get("config") or ""))
    except yaml.YAMLError as e:
        return web.back(s, "/ui/jobs", err=f"The config is not valid YAML: {e}")
    if not isinstance(config, dict):
        return web.back(s, "/ui/jobs", err="The config must be a mapping of keys to values (as in configs/*.yaml).")
    kind = "train-bert" if str(f.get("arch")) == "bert" else "train-gpt"
    return await _submit(request, s, {"kind": kind, "config": config}, "Pretraining")


@router.post("/ui/jobs/eval")
async def eval_job(request: Request):
    s = await web.need(request, admin=True)
    f = await web.form(request, s)
    spec = {"kind": "eval", "model": str(f.get("model") or ""), "task": str(f.get("task") or "")}
    return await _submit(request, s, spec, "Evaluation")


@router.post("/ui/jobs/batch")
async def batch(request: Request):
    s = await web.need(request, admin=True)
    f = await web.form(request, s)
    file_id, why = await _upload(request, f.get("file"), "batch")
    if why:
        return web.back(s, "/ui/jobs", err=f"Batch not started: {why}")
    body = {"input_file_id": file_id, "endpoint": str(f.get("endpoint") or ENDPOINTS[0]), "completion_window": "24h"}
    st, b = await call(request, "POST", "/v1/batches", json_body=body)
    if st != 200:
        return web.back(s, "/ui/jobs", err=f"Batch not started: {error_message(b)}")
    return web.back(s, f"/ui/jobs/{b['id']}", msg=f"Batch {b['id']} queued.")


@router.get("/ui/jobs/{job_id}")
async def job_page(request: Request, job_id: str):
    s = await web.need(request, admin=True)
    st, job = await call(request, "GET", f"/api/jobs/{job_id}")
    if st != 200:
        return web.render(request, "job.html", s, status=st, job=None, error=error_message(job), job_id=job_id)
    job["result_ref"] = _result_ref(job)
    return web.render(request, "job.html", s, job=job, job_id=job_id, error=None, terminal=TERMINAL)


@router.get("/ui/jobs/{job_id}/stream")
async def job_stream(request: Request, job_id: str):
    """Server-Sent Events: `event: job` (the job, whenever it changes) and `event: log` (each job event),
    polled from the jobs API once a second until the job ends or the browser leaves."""
    await web.need(request, admin=True)

    async def feed():
        after, last = 0, None
        while not await request.is_disconnected():
            st, page = await call(request, "GET", f"/api/jobs/{job_id}/events",
                                  params={"after": after, "limit": MAX_EVENTS_PAGE})
            if st == 200:
                for e in page.get("data", []):
                    after = max(after, int(e["id"]))
                    yield f"event: log\ndata: {json.dumps(e, default=str)}\n\n"
            st, job = await call(request, "GET", f"/api/jobs/{job_id}")
            if st != 200:
                yield f"event: gone\ndata: {json.dumps({'error': error_message(job)})}\n\n"
                return
            job["result_ref"] = _result_ref(job)
            snapshot = json.dumps(job, default=str)
            if snapshot != last:
                last = snapshot
                yield f"event: job\ndata: {snapshot}\n\n"
            if job["state"] in TERMINAL and not (st == 200 and len(page.get("data", [])) >= MAX_EVENTS_PAGE):
                yield "event: end\ndata: {}\n\n"
                return
            await asyncio.sleep(1.0)

    return StreamingResponse(feed(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


@router.post("/ui/jobs/{job_id}/cancel")
async def cancel(request: Request, job_id: str):
    s = await web.need(request, admin=True)
    await web.form(request, s)
    st, job = await call(request, "POST", f"/api/jobs/{job_id}/cancel")
    if st != 200:
        return web.back(s, f"/ui/jobs/{job_id}", err=f"Could not cancel: {error_message(job)}")
    return web.back(s, f"/ui/jobs/{job_id}", msg=f"Cancel requested; the job is {job.get('state')}.")
