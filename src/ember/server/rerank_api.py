"""Relevance routes for encoders: POST /v1/rerank (Cohere / Jina shape) and POST /score (vLLM's shape).

    ember serve --model minilm-l6-v2 --model my-reranker
    curl localhost:8000/v1/rerank -d '{"model": "my-reranker", "query": "capital of France",
                                       "documents": ["Paris is the capital of France.", "Bananas are yellow."]}'
    curl localhost:8000/score -d '{"model": "minilm-l6-v2", "text_1": "capital of France", "text_2": ["Paris"]}'

A cross-encoder (`ember finetune classify` on rows with `text`, `text_pair` and a numeric `score`: one
logit) scores each (query, document) pair as sigmoid(logit); an embedding model (minilm-l6-v2) scores by
the cosine of the two embeddings. Both run in the engine's `Encoder.score` (engine/encoders.py). Texts longer
than the model's window are truncated, as Cohere does; the number of documents and the length of every text
are checked before any work.
"""

import asyncio
import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from ember.errors import InvalidRequest
from ember.server.auth import require_scope
from ember.server.tasks_api import served_encoder

router = APIRouter(dependencies=[Depends(require_scope("inference"))])
MAX_DOCUMENTS = 1000  # Cohere's limit per rerank request
MAX_TEXT_CHARS = 32_768  # far past any encoder's window (512 tokens); bounds tokenizer work per text
Text = Annotated[StrictStr, Field(max_length=MAX_TEXT_CHARS)]


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: Text


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), strict=True)
    model: StrictStr | None = None
    query: Text
    documents: Annotated[list[Text | Document], Field(max_length=MAX_DOCUMENTS)]
    top_n: Annotated[StrictInt, Field(ge=1)] | None = None
    return_documents: StrictBool = True


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), strict=True)
    model: StrictStr | None = None
    text_1: Text | Annotated[list[Text], Field(max_length=MAX_DOCUMENTS)]
    text_2: Text | Annotated[list[Text], Field(max_length=MAX_DOCUMENTS)]


async def _scorer(request: Request, name: str | None):
    return await served_encoder(request, name, lambda m: m.encoder.enc.can_score,
                          "scoring needs an embedding model or a one-output cross-encoder "
                          "(`ember finetune classify` on rows with 'text', 'text_pair' and a numeric 'score')")


def _score(served, texts_1: list[str], texts_2: list[str]) -> tuple[list[float], int]:
    enc = served.encoder.enc
    with served.lock:  # one request's batches together; memory stays bounded
        if enc.head == "classify":  # a cross-encoder reads each pair
            tokens = enc.count_tokens(texts_1, texts_2)
        else:  # a bi-encoder embeds each distinct text once
            tokens = enc.count_tokens(list(dict.fromkeys([*texts_1, *texts_2])))
        return enc.score(texts_1, texts_2), tokens


async def _run(request: Request, served, texts_1: list[str], texts_2: list[str]):
    t0 = time.perf_counter()
    async with served.admission.slot():
        scores, tokens = await asyncio.get_running_loop().run_in_executor(None, _score, served, texts_1, texts_2)
    m = request.app.state.metrics
    m.prompt_tokens.labels(served.id).inc(tokens)
    m.e2e.labels(served.id).observe(time.perf_counter() - t0)
    request.state.log.update({"model": served.id, "inputs": len(texts_2), "prompt_tokens": tokens})
    return scores, tokens


@router.post("/v1/rerank")
async def rerank(body: RerankRequest, request: Request):
    if not body.documents:
        raise InvalidRequest("documents must not be empty", param="documents")
    if not body.query.strip():
        raise InvalidRequest("query must not be empty", param="query")
    served = await _scorer(request, body.model)
    docs = [d if isinstance(d, str) else d.text for d in body.documents]
    scores, tokens = await _run(request, served, [body.query] * len(docs), docs)
    order = sorted(range(len(docs)), key=lambda i: -scores[i])[: body.top_n]
    results = [{"index": i, "relevance_score": scores[i], **({"document": {"text": docs[i]}}
                                                               if body.return_documents else {})} for i in order]
    return {"id": f"rerank-{uuid.uuid4().hex}", "model": served.id, "results": results,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


@router.post("/score")
@router.post("/v1/score")
async def score(body: ScoreRequest, request: Request):
    t1 = [body.text_1] if isinstance(body.text_1, str) else list(body.text_1)
    t2 = [body.text_2] if isinstance(body.text_2, str) else list(body.text_2)
    if not t1 or not t2:
        raise InvalidRequest("text_1 and text_2 must not be empty", param="text_1" if not t1 else "text_2")
    if len(t1) == 1:
        t1 = t1 * len(t2)  # one query against many texts, as vLLM pairs them
    if len(t1) != len(t2):
        raise InvalidRequest(f"text_1 has {len(t1)} texts and text_2 {len(t2)}: give one text_1, or as many as "
                             "text_2", param="text_2")
    served = await _scorer(request, body.model)
    scores, tokens = await _run(request, served, t1, t2)
    return {"id": f"score-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": served.id,
            "data": [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}}
