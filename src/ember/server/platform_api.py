"""Platform API: the registry's versions, evaluation runs and eval-gated promotion over HTTP, admin keys only.

    curl -H "Authorization: Bearer $ADMIN_KEY" localhost:8000/api/models/smollm2-135m-instruct
    curl -H "Authorization: Bearer $ADMIN_KEY" 'localhost:8000/api/evals?ref=smollm2-135m-instruct'
    curl -H "Authorization: Bearer $ADMIN_KEY" -X POST localhost:8000/api/evals \\
         --json '{"ref": "smollm2-135m-instruct", "task": "builtin:generate", "limit": 4}'
    curl -H "Authorization: Bearer $ADMIN_KEY" -X POST \\
         localhost:8000/api/models/my-model/aliases/production/promote \\
         --json '{"version": 2, "gates": ["bleu>=current", "perplexity<=current*1.02"]}'

Included by ember.server.app when present. Handlers are plain `def` (FastAPI runs them in its thread pool) so
database work and evaluations never block the event loop. Everything reads and writes the registry database,
so results survive restarts and are shared by every replica. `POST /api/evals` queues an evaluation job
(jobs/, also under /api/jobs): a builtin task or a task file uploaded through /v1/files, never a path (a path
would let a client make the server read any YAML/JSONL file it can see).
"""

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, Field

from ember.errors import InvalidRequest
from ember.server.auth import require_scope

router = APIRouter(prefix="/api", dependencies=[Depends(require_scope("admin"))])


def _settings(request: Request):
    return request.app.state.settings


def _as_key(request: Request):
    """Registry changes made by this request are attributed to its key in the audit log and alias history."""
    from ember.store import audit

    key = getattr(request.state, "key", None)
    return audit.acting_as(key.id if key else None)


def _public(d: dict) -> dict:
    """Version metadata without server paths (a source file's absolute path is not the client's business)."""
    import os

    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        if isinstance(v, str) and os.path.isabs(v) and len(v) > 1:
            return os.path.basename(v)
        return v

    return clean(d)


class EvalRequest(BaseModel):
    ref: str = Field(max_length=300)
    task: str = Field(max_length=300,
                      description="builtin:perplexity | builtin:generate | builtin:classify | builtin:tag | file-ID")
    limit: int | None = Field(default=None, ge=1, le=1_000_000)
    data_file: str | None = Field(default=None, max_length=300)


class AliasRequest(BaseModel):
    version: int | str


class PromoteRequest(BaseModel):
    version: int | str
    gates: list[str] = Field(default_factory=list, max_length=32)


@router.get("/models")
def list_models(request: Request, name: str | None = None):
    from ember.store import registry

    return {"data": [_public(v.to_dict()) for v in registry.list_versions(name, _settings(request))]}


@router.get("/models/{ref}")
def show_model(ref: str, request: Request):
    from ember.store import evals, registry

    info = registry.resolve(ref, _settings(request))
    return _public({**info.to_dict(), "evals": evals.summary(info.ref, _settings(request))})


@router.get("/models/{name}/aliases/{alias}/history")
def alias_history(name: str, alias: str, request: Request):
    from ember.store import registry

    return {"data": registry.alias_history(name, alias, _settings(request))}


@router.put("/models/{name}/aliases/{alias}")
def set_alias(name: str, alias: str, body: AliasRequest, request: Request):
    from ember.store import registry

    with _as_key(request):
        return _public(registry.set_alias(name, alias, body.version, settings=_settings(request)).to_dict())


@router.post("/models/{name}/aliases/{alias}/promote")
def promote(name: str, alias: str, body: PromoteRequest, request: Request):
    """200 with the decision when the alias moved; 409 with the decision and the failing gates when refused."""
    from ember.evaluate.gates import promote as do_promote

    with _as_key(request):
        d = do_promote(name, alias, body.version, body.gates, settings=_settings(request))
    if not d.moved:
        raise d.refusal()
    return d.to_dict()


@router.get("/evals")
def list_evals(request: Request, ref: str, task: str | None = None):
    from ember.store import evals

    return {"data": evals.runs(ref, task, _settings(request))}


@router.get("/evals/compare")
def compare(request: Request, a: str, b: str, task: str | None = None):
    """Stored results only (an evaluation is a POST)."""
    from ember.evaluate.report import compare_rows
    from ember.store import evals, registry

    st = _settings(request)
    rows = compare_rows(evals.runs(a, task, st), evals.runs(b, task, st))
    return {"a": registry.resolve(a, st).ref, "b": registry.resolve(b, st).ref, "rows": rows}


@router.get("/evals/{run_id}")
def get_eval(request: Request, run_id: int = Path(ge=1, lt=2**63), outputs: bool = False):
    from ember.store import evals

    r = evals.get(run_id, _settings(request))
    if outputs:
        r["outputs"] = evals.outputs(r, _settings(request))
    return r


@router.post("/evals", status_code=201)
def run_eval(body: EvalRequest, request: Request):
    """Queues an evaluation job (see /api/jobs); the run appears under GET /api/evals when it has finished."""
    from ember.jobs import queue
    from ember.server.files_api import owner_of

    if not (body.task.startswith("builtin:") or body.task.startswith("file-")):
        raise InvalidRequest("task must be a builtin task (builtin:NAME) or a task file uploaded with POST "
                             "/v1/files (purpose evals; then also give data_file)", param="task")
    spec = {"model": body.ref, "task": body.task, "data_file": body.data_file, "limit": body.limit}
    with _as_key(request):
        return queue.submit("eval", spec, owner_of(request)[0], settings=_settings(request))
