"""`/api/jobs` (admin keys): every job (fine-tuning and batches included) and the kinds OpenAI has no route
for: tokenizer training, data preparation, GPT/BERT pretraining and evaluation runs.

    curl -X POST localhost:8000/api/jobs -d '{"kind": "tokenizer", "files": ["file-..."], "type": "bpe",
                                               "vocab_size": 512, "name": "my-bpe"}'
    curl -X POST localhost:8000/api/jobs -d '{"kind": "data", "files": ["file-..."], "tokenizer": "my-bpe"}'
    curl -X POST localhost:8000/api/jobs -d '{"kind": "train-gpt", "config": {"name": "g", "tokenizer": "my-bpe",
                                               "data": "job-<the data job>", "max_steps": 50}}'
    curl -X POST localhost:8000/api/jobs -d '{"kind": "eval", "model": "smollm2-135m-instruct",
                                               "task": "file-<task.yaml>", "data_file": "file-<data.jsonl>"}'
    curl localhost:8000/api/jobs/JOB/events?after=0     # step, loss, eval metrics, messages, checkpoints
    curl -X POST localhost:8000/api/jobs/JOB/cancel

Input files are /v1/files (purpose `train` for corpora, `evals` for task files and their data); a training
config is the keys of a configs/*.yaml file, with `data` naming a finished data job (its shards) and `out`
left to the job (its run folder). States, events and cancel are the same for every kind (jobs/).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from ember.server.auth import require_scope
from ember.server.files_api import owner_of

router = APIRouter(prefix="/api/jobs", dependencies=[Depends(require_scope("admin"))])


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # the kind's own fields, checked by jobs/kinds.py
    kind: str


@router.post("")
def create(body: JobRequest, request: Request):
    from ember.jobs import queue

    spec = body.model_dump(exclude={"kind"})
    job = queue.submit(body.kind, spec, owner_of(request)[0], settings=request.app.state.settings)
    return JSONResponse(job, status_code=201)


@router.get("")
def list_jobs(request: Request, kind: str | None = None, state: str | None = None, limit: int = 100):
    from ember.store import jobs

    return {"object": "list", "data": jobs.list_jobs(None, (kind,) if kind else None, state,
                                                     max(1, min(limit, 1000)), request.app.state.settings)}


@router.get("/{job_id}")
def show(job_id: str, request: Request):
    from ember.store import jobs

    return jobs.get(job_id, None, request.app.state.settings)


@router.get("/{job_id}/events")
def events(job_id: str, request: Request, after: int = 0, limit: int = 1000):
    from ember.store import jobs

    jobs.get(job_id, None, request.app.state.settings)
    return {"object": "list", "data": jobs.events(job_id, after, max(1, min(limit, 10000)),
                                                  settings=request.app.state.settings)}


@router.post("/{job_id}/cancel")
def cancel(job_id: str, request: Request):
    from ember.jobs import queue

    return queue.cancel(job_id, wait=8.0, settings=request.app.state.settings)
