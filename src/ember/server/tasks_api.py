"""Routes for fine-tuned encoder models: POST /v1/classify and POST /v1/tag.

    ember serve --model my-clf --model my-ner
    curl localhost:8000/v1/classify --json '{"model": "my-clf", "input": ["the striker scored", "snow fell"]}'
    curl localhost:8000/v1/tag --json '{"model": "my-ner", "input": "Maria Lopez flew to New York."}'

A model serves /v1/classify when `ember finetune classify` made it (metadata task "text-classification"),
/v1/tag when `ember finetune tag` made it ("token-classification"). The pool loads the model once, with its
head, as the engine's `Encoder` (engine/encoders.py); the same object embeds. /v1/tag returns entities
whose [start, end) character offsets slice the input to the entity's text, and every word with its tag.
"""

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from ember.errors import InvalidRequest
from ember.server import limits
from ember.server.auth import require_scope
from ember.server.errors import NotReady
from ember.server.residency import ensure_loaded

router = APIRouter(dependencies=[Depends(require_scope("inference"))])
Inputs = StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=2048)]


class TaskRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=(), strict=True)
    model: StrictStr | None = None
    input: Inputs


async def served_encoder(request: Request, name: str | None, fits, what: str):
    """The served encoder a request names (or the only one that `fits`), refused with a 400 naming the
    model when it cannot do `what`. One not in memory (keep_alive) loads first; the request waits."""
    st = request.app.state
    if name is not None:
        await ensure_loaded(request, name, "embed")
    if st.draining:
        raise NotReady("the server is shutting down")
    if not st.pool.ready:
        raise NotReady("models are still loading; see /ready")
    if name is None:
        fit = [m for m in st.pool.all() if m.kind == "embed" and m.loaded and fits(m)]
        if len(fit) != 1:
            raise InvalidRequest("the 'model' parameter is required", param="model")
        limits.check_model(request, fit[0])
        return fit[0]
    try:
        served = st.pool.get(name, "embed")
    except InvalidRequest:  # a decoder
        raise InvalidRequest(f"the model {name!r} is a text generation model; {what}",
                             param="model", code="model_not_supported") from None
    limits.check_model(request, served)
    if not served.loaded:
        raise NotReady(f"the model {served.id!r} is not loaded; retry")
    if not fits(served):
        raise InvalidRequest(f"the model {served.id!r} cannot do this: {what}", param="model",
                             code="model_not_supported")
    return served


async def _served(request: Request, name: str | None, task: str):
    how = "classify" if task == "text-classification" else "tag"
    what = (f"{'classification' if how == 'classify' else 'tagging'} needs a model made by "
            f"`ember finetune {how}`")
    return await served_encoder(request, name, lambda m: m.metadata.get("task") == task, what)


def _inputs(body: TaskRequest) -> list[str]:
    items = [body.input] if isinstance(body.input, str) else list(body.input)
    if any(not x.strip() for x in items):
        raise InvalidRequest("input strings must not be empty", param="input")
    return items


# These run in a worker thread; the encoder hands each batch to the compute thread. The model's lock keeps
# one request's batches together (memory stays bounded); nothing on the compute thread takes that lock.
def _classify(served, texts):
    with served.lock:
        return served.encoder.enc.classify(texts)


def _tag(served, texts):
    with served.lock:
        return [served.encoder.enc.tag(t) for t in texts]


@router.post("/v1/classify")
async def classify(body: TaskRequest, request: Request):
    served = await _served(request, body.model, "text-classification")
    texts = _inputs(body)
    async with served.admission.slot():
        ranked = await asyncio.get_running_loop().run_in_executor(None, _classify, served, texts)
    request.state.log.update({"model": served.id, "inputs": len(texts)})
    return {"object": "list", "model": served.id,
            "data": [{"object": "classification", "index": i, "label": r[0]["label"], "score": r[0]["score"],
                      "labels": r} for i, r in enumerate(ranked)]}


@router.post("/v1/tag")
async def tag(body: TaskRequest, request: Request):
    served = await _served(request, body.model, "token-classification")
    texts = _inputs(body)
    async with served.admission.slot():
        tagged = await asyncio.get_running_loop().run_in_executor(None, _tag, served, texts)
    request.state.log.update({"model": served.id, "inputs": len(texts)})
    return {"object": "list", "model": served.id,
            "data": [{"object": "tagging", "index": i, **t} for i, t in enumerate(tagged)]}
