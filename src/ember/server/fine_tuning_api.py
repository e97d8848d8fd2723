"""`/v1/fine_tuning/jobs` in OpenAI's shape: create, list, retrieve, events, checkpoints, cancel.

    client.fine_tuning.jobs.create(model="smollm2-135m-instruct", training_file=f.id,
                                   hyperparameters={"n_epochs": 2}, suffix="support",
                                   extra_body={"ember": {"training": "lora", "lora_rank": 8}})

`method.type` is `supervised` (chat / instruction SFT; LoRA by default, `ember.training: "full"` for every
weight), or Ember's `classification` and `tagging` (encoder heads). Ember's extras sit under `ember`:
training (lora | full), lora_rank, lora_alpha, max_steps, checkpoint_every, eval_every, max_length, seed.
`fine_tuned_model` is the registry reference of the result (`<base>-ft-<suffix>:N`), served by this server
as soon as the job has succeeded. The job itself is a row of the jobs table (jobs/), run by a worker.
"""

from __future__ import annotations

import re
import secrets
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from ember.errors import InvalidRequest
from ember.server.auth import require_scope
from ember.server.files_api import owner_of, visible_owner

router = APIRouter(prefix="/v1/fine_tuning", dependencies=[Depends(require_scope("inference"))])
STATUS = {"queued": "queued", "running": "running", "succeeded": "succeeded", "failed": "failed",
          "cancelled": "cancelled"}
Auto = Literal["auto"] | int | float


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_epochs: Auto | None = None
    batch_size: Auto | None = None
    learning_rate_multiplier: Auto | None = None


class MethodSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    supervised: MethodSpec | None = None
    classification: MethodSpec | None = None
    tagging: MethodSpec | None = None
    dpo: dict | None = None
    reinforcement: dict | None = None


class FineTuneRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = None
    suffix: str | None = Field(default=None, max_length=64)
    seed: int | None = None
    method: Method | None = None
    metadata: dict[str, str] | None = None
    integrations: list[Any] | None = None
    ember: dict | None = None


def job_object(j: dict) -> dict:
    spec, result = j["spec"], j["result"]
    error = None
    if j["state"] == "failed":
        error = {"code": "job_failed", "message": j["error"] or "the job failed", "param": None}
    hp = spec.get("hyperparameters") or {}
    return {"object": "fine_tuning.job", "id": j["id"], "model": spec.get("model_input", spec.get("model")),
            "created_at": j["created_at"], "finished_at": j["finished_at"],
            "fine_tuned_model": result.get("fine_tuned_model"), "organization_id": "org-ember",
            "result_files": [], "status": STATUS[j["state"]], "training_file": spec.get("training_file"),
            "validation_file": spec.get("validation_file"),
            "hyperparameters": {k: hp.get(k) or "auto" for k in ("n_epochs", "batch_size",
                                                                 "learning_rate_multiplier")},
            "trained_tokens": result.get("trained_tokens"), "error": error, "seed": spec.get("seed") or 0,
            "estimated_finish": None, "integrations": [], "metadata": spec.get("metadata"),
            "method": {"type": spec.get("method_type", "supervised")}, "user_provided_suffix": spec.get("suffix"),
            "ember": {"state": j["state"], "attempts": j["attempts"], "base": spec.get("model"),
                      "output_name": spec.get("output_name"), "summary": result.get("summary")}}


def _job(job_id: str, request: Request) -> dict:
    from ember.store import jobs

    j = jobs.get(job_id, visible_owner(request), request.app.state.settings)
    if j["kind"] != "fine-tune":
        from ember.errors import NotFound

        raise NotFound(f"no fine-tuning job with id {job_id!r}", param="fine_tuning_job_id")
    return j


@router.post("/jobs")
def create(body: FineTuneRequest, request: Request):
    from ember.jobs import queue

    if body.integrations:
        raise InvalidRequest("integrations are not supported", param="integrations")
    method = body.method.type if body.method else "supervised"
    if method in ("dpo", "reinforcement"):
        raise InvalidRequest(f"method.type {method!r} is not supported; use supervised, classification or "
                             "tagging", param="method.type")
    hp = body.hyperparameters
    if body.method is not None:
        nested = getattr(body.method, method, None) if method in ("supervised", "classification", "tagging") \
            else None
        if nested is not None and nested.hyperparameters is not None:
            hp = nested.hyperparameters
    if body.suffix is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", body.suffix):
        raise InvalidRequest("suffix: letters, digits, '.', '_' and '-' only", param="suffix")
    tok = secrets.token_hex(12)
    base_name = body.model.split("@")[0].split(":")[0]
    spec = {"model": body.model, "model_input": body.model, "training_file": body.training_file,
            "validation_file": body.validation_file, "method_type": method,
            "hyperparameters": hp.model_dump(exclude_none=True) if hp else {}, "suffix": body.suffix,
            "seed": body.seed, "metadata": body.metadata, "ember": body.ember or {},
            "output_name": f"{base_name}-ft-{body.suffix or tok[:8]}"}
    owner, _ = owner_of(request)
    return job_object(queue.submit("fine-tune", spec, owner, job_id=f"ftjob-{tok}",
                                   settings=request.app.state.settings))


@router.get("/jobs")
def list_jobs(request: Request, after: str | None = None, limit: int = 20):
    from ember.store import jobs

    data = [job_object(j) for j in jobs.list_jobs(visible_owner(request), ("fine-tune",), limit=10000,
                                                  settings=request.app.state.settings)]
    if after:
        ids = [j["id"] for j in data]
        data = data[ids.index(after) + 1:] if after in ids else []
    page = data[:max(1, min(limit, 100))]
    return {"object": "list", "data": page, "has_more": len(data) > len(page)}


@router.get("/jobs/{job_id}")
def retrieve(job_id: str, request: Request):
    return job_object(_job(job_id, request))


@router.get("/jobs/{job_id}/events")
def events(job_id: str, request: Request, after: str | None = None, limit: int = 20):
    from ember.store import jobs

    _job(job_id, request)
    data = jobs.events(job_id, limit=100_000, settings=request.app.state.settings)[::-1]  # newest first
    if after and after.startswith("ftevent-") and after[8:].isdigit():
        data = [e for e in data if e["id"] < int(after[8:])]
    page = data[:max(1, min(limit, 1000))]
    return {"object": "list", "has_more": len(data) > len(page),
            "data": [{"object": "fine_tuning.job.event", "id": f"ftevent-{e['id']}", "created_at": e["created_at"],
                      "level": {"warning": "warn"}.get(e["level"], e["level"]), "message": e["message"],
                      "data": e["data"], "type": "metrics" if e["type"] == "metrics" else "message"}
                     for e in page]}


@router.get("/jobs/{job_id}/checkpoints")
def checkpoints(job_id: str, request: Request, after: str | None = None, limit: int = 10):
    from ember.jobs import queue

    j = _job(job_id, request)
    data = [{"object": "fine_tuning.job.checkpoint", "id": f"ftckpt-{c['id']}", "created_at": c["created_at"],
             "fine_tuned_model_checkpoint": f"{j['id']}:step-{c['step']}", "fine_tuning_job_id": j["id"],
             "step_number": c["step"],
             "metrics": {k: v for k, v in c["metrics"].items() if isinstance(v, (int, float))},
             "ember": {"path": c["data"].get("path")}}
            for c in queue.checkpoints(job_id, request.app.state.settings)]
    if after:
        ids = [c["id"] for c in data]
        data = data[ids.index(after) + 1:] if after in ids else []
    page = data[:max(1, min(limit, 100))]
    return {"object": "list", "data": page, "has_more": len(data) > len(page),
            "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None}


@router.post("/jobs/{job_id}/cancel")
def cancel(job_id: str, request: Request):
    from ember.jobs import queue

    _job(job_id, request)
    return job_object(queue.cancel(job_id, wait=8.0, settings=request.app.state.settings))
