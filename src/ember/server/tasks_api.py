"""Routes for fine-tuned encoder models: POST /v1/classify and POST /v1/tag.

    ember serve --model my-clf --model my-ner
    curl localhost:8000/v1/classify --json '{"model": "my-clf", "input": ["the striker scored", "snow fell"]}'
    curl localhost:8000/v1/tag --json '{"model": "my-ner", "input": "Maria Lopez flew to New York."}'

A model serves /v1/classify when `ember finetune classify` made it (metadata task "text-classification"),
/v1/tag when `ember finetune tag` made it ("token-classification"). The task head is loaded on the first
request for the model (the pool loads encoders for embeddings only) and kept. /v1/tag returns entities
whose [start, end) character offsets slice the input to the entity's text, and every word with its tag.
"""

import asyncio
import threading
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from ember.engine import compute
from ember.errors import InvalidRequest
from ember.server.auth import require_scope
from ember.server.errors import NotReady

router = APIRouter(dependencies=[Depends(require_scope("inference"))])
_cache_lock = threading.Lock()
Inputs = StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=2048)]


class TaskRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=(), strict=True)
    model: StrictStr | None = None
    input: Inputs


def _served(request: Request, name: str | None, task: str):
    st = request.app.state
    if st.draining:
        raise NotReady("the server is shutting down")
    if not st.pool.ready:
        raise NotReady("models are still loading; see /ready")
    if name is None:
        fit = [m for m in st.pool.all() if m.metadata.get("task") == task]
        if len(fit) != 1:
            raise InvalidRequest("the 'model' parameter is required", param="model")
        return fit[0]
    served = st.pool.get(name, "embed")
    if served.metadata.get("task") != task:
        what = "classification" if task == "text-classification" else "tagging"
        raise InvalidRequest(f"the model {served.id!r} is not a {what} model (fine-tune one with "
                             f"`ember finetune {'classify' if what == 'classification' else 'tag'}`)",
                             param="model", code="model_not_supported")
    return served


def _head(request: Request, served, task: str):
    """The Classifier / Tagger of a served model, loaded once (under the model's lock)."""
    st = request.app.state
    with _cache_lock:
        cache = getattr(st, "task_heads", None)
        if cache is None:
            st.task_heads = cache = {}
    with served.lock:
        head = cache.get(served.ref)
        if head is None:
            from ember.store import registry

            folder = registry.materialize(served.ref, st.settings)
            if task == "text-classification":
                from ember.finetune.classify import Classifier

                head = compute.run(Classifier, folder)
            else:
                from ember.finetune.tag import Tagger

                head = compute.run(Tagger, folder)
            cache[served.ref] = head
        return head


def _inputs(body: TaskRequest) -> list[str]:
    items = [body.input] if isinstance(body.input, str) else list(body.input)
    if any(not x.strip() for x in items):
        raise InvalidRequest("input strings must not be empty", param="input")
    return items


# These run in a worker thread and hand the model work to the compute thread while holding the model's
# lock; nothing on the compute thread ever takes that lock, so the two cannot wait on each other.
def _classify(request, served, texts):
    head = _head(request, served, "text-classification")
    with served.lock:
        return compute.run(head.predict, texts)


def _tag(request, served, texts):
    head = _head(request, served, "token-classification")
    with served.lock:
        return compute.run(lambda: [head.tag(t) for t in texts])


@router.post("/v1/classify")
async def classify(body: TaskRequest, request: Request):
    served = _served(request, body.model, "text-classification")
    texts = _inputs(body)
    async with served.admission.slot():
        ranked = await asyncio.get_running_loop().run_in_executor(None, _classify, request, served, texts)
    request.state.log.update({"model": served.id, "inputs": len(texts)})
    return {"object": "list", "model": served.id,
            "data": [{"object": "classification", "index": i, "label": r[0]["label"], "score": r[0]["score"],
                      "labels": r} for i, r in enumerate(ranked)]}


@router.post("/v1/tag")
async def tag(body: TaskRequest, request: Request):
    served = _served(request, body.model, "token-classification")
    texts = _inputs(body)
    async with served.admission.slot():
        tagged = await asyncio.get_running_loop().run_in_executor(None, _tag, request, served, texts)
    request.state.log.update({"model": served.id, "inputs": len(texts)})
    return {"object": "list", "model": served.id,
            "data": [{"object": "tagging", "index": i, **t} for i, t in enumerate(tagged)]}
