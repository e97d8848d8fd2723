"""`/v1/batches` in OpenAI's shape: create over an uploaded JSONL, retrieve, list, cancel.

    client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")

A batch is a job of kind `batch` (jobs/batch.py runs it through this server's own routes at low priority).
`output_file_id` and `error_file_id` are /v1/files of purpose `batch_output`, one line per request with its
`custom_id`; `request_counts` grows while it runs.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict

from ember.errors import InvalidRequest, NotFound
from ember.server.auth import require_scope
from ember.server.files_api import owner_of, visible_owner

router = APIRouter(prefix="/v1", dependencies=[Depends(require_scope("inference"))])


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None
    output_expires_after: dict | None = None


def batch_object(j: dict) -> dict:
    spec, result = j["spec"], j["result"]
    status = {"queued": "validating", "running": "in_progress", "succeeded": "completed", "failed": "failed",
              "cancelled": "cancelled"}[j["state"]]
    if j["state"] == "running" and j["cancel_requested"]:
        status = "cancelling"
    counts = result.get("request_counts") or {}
    total = counts.get("total", spec.get("lines", 0))
    if "completed" not in counts:
        counts = {"total": total, "completed": counts.get("done", 0), "failed": 0}
    errors = None
    if j["state"] == "failed":
        errors = {"object": "list", "data": [{"code": "batch_failed", "message": j["error"], "param": None,
                                              "line": None}]}
    return {"id": j["id"], "object": "batch", "endpoint": spec.get("endpoint"), "errors": errors,
            "input_file_id": spec.get("input_file_id"), "completion_window": spec.get("completion_window", "24h"),
            "status": status, "output_file_id": result.get("output_file_id"),
            "error_file_id": result.get("error_file_id"), "created_at": j["created_at"],
            "in_progress_at": j["started_at"], "expires_at": None, "finalizing_at": None,
            "completed_at": j["finished_at"] if j["state"] == "succeeded" else None,
            "failed_at": j["finished_at"] if j["state"] == "failed" else None, "expired_at": None,
            "cancelling_at": None, "cancelled_at": j["finished_at"] if j["state"] == "cancelled" else None,
            "request_counts": {"total": counts.get("total", total), "completed": counts.get("completed", 0),
                               "failed": counts.get("failed", 0)},
            "metadata": spec.get("metadata")}


def _job(batch_id: str, request: Request) -> dict:
    from ember.store import jobs

    j = jobs.get(batch_id, visible_owner(request), request.app.state.settings)
    if j["kind"] != "batch":
        raise NotFound(f"no batch with id {batch_id!r}", param="batch_id")
    return j


@router.post("/batches")
def create(body: BatchRequest, request: Request):
    import secrets

    from ember.jobs import queue
    from ember.jobs.batch import URLS

    if body.endpoint not in URLS:
        raise InvalidRequest(f"endpoint must be one of {', '.join(URLS)}", param="endpoint")
    owner, _ = owner_of(request)
    st = request.app.state.settings
    spec = {"input_file_id": body.input_file_id, "endpoint": body.endpoint,
            "completion_window": body.completion_window, "metadata": body.metadata}
    job = queue.submit("batch", spec, owner, job_id=f"batch_{secrets.token_hex(12)}", settings=st)
    return batch_object(job)


@router.get("/batches")
def list_batches(request: Request, after: str | None = None, limit: int = 20):
    from ember.store import jobs

    data = [batch_object(j) for j in jobs.list_jobs(visible_owner(request), ("batch",), limit=10000,
                                                    settings=request.app.state.settings)]
    if after:
        ids = [b["id"] for b in data]
        data = data[ids.index(after) + 1:] if after in ids else []
    page = data[:max(1, min(limit, 100))]
    return {"object": "list", "data": page, "has_more": len(data) > len(page),
            "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None}


@router.get("/batches/{batch_id}")
def retrieve(batch_id: str, request: Request):
    return batch_object(_job(batch_id, request))


@router.post("/batches/{batch_id}/cancel")
def cancel(batch_id: str, request: Request):
    from ember.jobs import queue

    _job(batch_id, request)
    return batch_object(queue.cancel(batch_id, wait=8.0, settings=request.app.state.settings))
