"""The OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions, /v1/embeddings, and vLLM's
/tokenize, /detokenize and /tokenizer_info.

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="ember-...")   # any string when keys are off
    client.chat.completions.create(model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Hi"}])

Streams are Server-Sent Events exactly as OpenAI sends them: `data: {json}\\n\\n` per chunk, the role in the
first chat delta of each choice, `data: [DONE]\\n\\n` last. Response shapes are built in `formats.py`.
"""

import asyncio
import base64
import contextlib
import dataclasses
import json
import struct
import time
import uuid
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from ember.errors import EmberError, InvalidRequest
from ember.server import formats, limits, residency, tools
from ember.server.auth import require_scope
from ember.server.errors import NotReady, error_body
from ember.server.generation import Run
from ember.server.residency import ensure_loaded
from ember.server.schemas import ChatRequest, CompletionRequest, DetokenizeRequest, EmbeddingRequest, TokenizeRequest
from ember.server.structured_schemas import constraint_of

if TYPE_CHECKING:
    from ember.engine.sampling import SamplingParams

router = APIRouter(dependencies=[Depends(require_scope("inference"))])


class SSEResponse(StreamingResponse):
    media_type = "text/event-stream"
    on_close = None

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            # However the response ended (client gone, shutdown), close the generator now so its
            # `finally` aborts the engine requests and frees their slots immediately; on_close covers a
            # generator that never started (its `finally` would not run).
            await self.body_iterator.aclose()
            if self.on_close is not None:
                self.on_close()


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _state(request: Request):
    return request.app.state


def _served(request: Request, name: str | None, kind: str):
    st = _state(request)
    if st.draining:
        raise NotReady("the server is shutting down")
    served = st.pool.get(name, kind) if st.pool.models else None
    if served is None:
        raise NotReady("models are still loading; see /ready")
    limits.check_model(request, served)  # a key limited to other models gets 404
    if not served.loaded:  # unloaded while this request waited: it has to come again
        raise NotReady(f"the model {served.id!r} is not loaded; retry")
    request.state.log["version"] = served.ref  # the x-ember-model-version header (server/middleware.py)
    _pin(request, served.engine)
    return served


def _pin(request: Request, engine) -> None:
    """Keeps the engine this request started with from being freed by a hot swap or an unload until the
    response is sent (model_set.engine_idle waits for pins; the middleware releases it)."""
    if engine is None:
        return
    engine.pins = getattr(engine, "pins", 0) + 1

    def release():
        engine.pins -= 1

    ends = getattr(request.state, "on_end", None)
    if ends is None:
        ends = request.state.on_end = []
    ends.append(release)


# ----- models -----
@router.get("/v1/models")
async def list_models(request: Request):
    key = getattr(request.state, "key", None)
    pool = _state(request).pool
    adapters = await asyncio.to_thread(pool.adapter_cards)  # LoRA adapters served by a base, unmerged
    cards = [formats.model_card(m) for m in pool.all() if key is None or limits.allowed(key, m)]
    return {"object": "list", "data": cards + [c for c in adapters if key is None or limits.allowed(
        key, residency.Named(c["id"], c["root"]))]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request):
    pool = _state(request).pool
    for kind in ("generate", "embed"):
        try:
            served = pool.get(model_id, kind)
            limits.check_model(request, served)
            return formats.model_card(served)
        except InvalidRequest:  # served, but of the other kind
            continue
    raise AssertionError("unreachable")


# ----- generation -----
async def _collect(run: Run) -> dict[int, dict[int, formats.ChoiceAcc]]:
    out: dict[int, dict[int, formats.ChoiceAcc]] = {}
    async for pi, d in run.events():
        out.setdefault(pi, {}).setdefault(d.index, formats.ChoiceAcc()).add(d)
    return out


async def _run_generation(request: Request, served, prompts, params, body, fmt: "formats.Formatter"):
    st = _state(request)
    record = request.state.log
    run = Run(served, prompts, params, st.metrics, record, request_id=request.state.request_id)
    try:
        run.ticket = await limits.admit(request, served)  # the key's rpm/tpm/parallel/budget
        key = getattr(request.state, "key", None)
        run.tenant, run.queue_timeout = (key.id if key else None), st.limits.queue_timeout
        run.deadline = run.t_arrival + st.limits.request_timeout
        if not await _unless_disconnected(request, run.admit()):
            return _client_gone(run)
        if not body.stream:
            try:
                done, accs = await _unless_disconnected(request, _collect(run), result=True)
            finally:
                run.close()
            if not done:
                return _client_gone(run)
            if st.log_content:
                record["completion"] = [a.text for p in accs.values() for a in p.values()]
            return fmt.full(accs, run, body.n)
        run.start()  # engine errors surface here, before any header is sent
        resp = SSEResponse(_stream(run, fmt, body, st.log_content),
                           headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        resp.on_close = run.close
        return resp
    except BaseException:
        run.close(status=400)
        raise


async def _unless_disconnected(request: Request, coro, result: bool = False):
    """Awaits `coro` unless the client hangs up first; then cancels it. A request waiting in the admission
    queue, or a non-streamed one, has nowhere to send its answer once the client is gone, so it must not keep
    its queue place or its engine slot (a stream notices the hang-up itself, through its response)."""
    task = asyncio.ensure_future(coro)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            value = task.result()  # re-raises what the work raised (Overloaded, InvalidRequest, ...)
            return (True, value) if result else True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return (False, None) if result else False
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()


async def _disconnected(request: Request) -> None:
    # The body has been read, so the server's next message for this request is its disconnect (what
    # Starlette's StreamingResponse listens for too).
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _client_gone(run: Run) -> Response:
    run.aborted = True
    run.close()  # counted as aborted; the slot and the queue place are free again
    run.record["error"] = "client disconnected"
    return Response(status_code=499)  # nginx's "client closed request": nobody reads it


async def _stream(run: Run, fmt, body, log_content: bool):
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    texts: dict[tuple[int, int], str] = {}
    try:
        for chunk in fmt.stream_start(include_usage):
            yield _sse(chunk)
        async for pi, d in run.events():
            if log_content:
                texts[(pi, d.index)] = texts.get((pi, d.index), "") + d.text
            for chunk in fmt.stream_delta(pi, d, include_usage):
                yield _sse(chunk)
        if include_usage:
            yield _sse(fmt.usage_chunk(run))
        yield "data: [DONE]\n\n"
    except EmberError as e:  # after the headers went out, an error can only be reported in the stream
        run.record["error"] = e.message
        yield _sse(error_body(e.message, e.type, e.param, e.code))
        yield "data: [DONE]\n\n"
    finally:
        if log_content:
            run.record["completion"] = [texts[k] for k in sorted(texts)]
        run.close()


def _prompt_ids(engine, prompt) -> list[list[int]]:
    if isinstance(prompt, str):
        return [engine.encode(prompt)]
    if prompt and isinstance(prompt[0], int):
        return [engine.encode(list(prompt))]
    return [engine.encode(p if isinstance(p, str) else list(p)) for p in prompt]


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    await ensure_loaded(request, body.model, "generate")  # one not in memory loads; the request waits
    served = _served(request, body.model, "generate")
    lim = _state(request).limits
    limits.check_text(body, lim)  # sizes, ranges and valid text before any tokenizing
    params = body.to_sampling_params()
    engine = served.engine
    prompts = await run_in_threadpool(_prompt_ids, engine, body.prompt)  # off the event loop
    limits.check_params(params, served, prompts, lim, getattr(request.state, "key", None), body.cache_salt)
    params = await _constrained(engine, params, constraint_of(body))
    for ids in prompts:
        engine.check(ids, params)
    if _state(request).log_content:
        request.state.log["prompt"] = body.prompt
    fmt = formats.CompletionFormat(served, prompts, body)
    return await _run_generation(request, served, prompts, params, body, fmt)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request):
    await ensure_loaded(request, body.model, "generate")  # one not in memory loads; the request waits
    served = _served(request, body.model, "generate")
    lim = _state(request).limits
    limits.check_chat(body, lim)  # message count, characters, valid text: before the template is rendered
    engine = served.engine
    messages = tools.chat_messages(body.messages)
    tool_choice = body.tool_choice.model_dump() if hasattr(body.tool_choice, "model_dump") else body.tool_choice
    ids, constraint, names = await run_in_threadpool(  # the template renders off the event loop
        tools.prepare_chat, engine, messages, [t.model_dump(exclude_none=True) for t in body.tools or []] or None,
        tool_choice, body.parallel_tool_calls, constraint_of(body), body.add_generation_prompt)
    params = body.to_sampling_params()
    limits.check_params(params, served, [ids], lim, getattr(request.state, "key", None), body.cache_salt)
    params = await _constrained(engine, params, constraint)
    engine.check(ids, params, param="messages")
    if _state(request).log_content:
        request.state.log["prompt"] = messages
    fmt = tools.ToolChatFormat(served, [ids], body, names) if names else formats.ChatFormat(served, [ids], body)
    return await _run_generation(request, served, [ids], params, body, fmt)


async def _constrained(engine, params: "SamplingParams", constraint) -> "SamplingParams":
    """Attaches a structured-output constraint, compiled now on a worker thread (bounded in time, so a
    pathological schema is a 400 at once and the event loop and the engine's streams never wait on it)."""
    if constraint is None:
        return params
    params = dataclasses.replace(params, constraint=constraint)  # re-validates (beam search + constraint)
    await asyncio.get_running_loop().run_in_executor(None, engine.compile_constraint, constraint)
    return params


# ----- embeddings, tokenize, detokenize -----
@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request):
    await ensure_loaded(request, body.model, "embed")  # one not in memory loads; the request waits
    served = _served(request, body.model, "embed")
    limits.check_text(body, _state(request).limits, "input", per_item=True)
    inputs = [body.input] if isinstance(body.input, str) or (body.input and isinstance(body.input[0], int)) \
        else list(body.input)
    if any(isinstance(x, str) and not x for x in inputs):
        raise InvalidRequest("input strings must not be empty", param="input")
    vocab = len(served.tokenizer)
    if any(isinstance(x, list) and any(not 0 <= t < vocab for t in x) for x in inputs):
        raise InvalidRequest("input token id out of range", param="input")
    t0 = time.perf_counter()
    ticket = await limits.admit(request, served)
    key = getattr(request.state, "key", None)
    counts = []
    try:
        async with served.admission.slot(tenant=key.id if key else None):
            vecs, counts = await asyncio.get_running_loop().run_in_executor(None, _embed_locked, served, inputs)
    finally:
        ticket.close(sum(counts), 0)
    dim = len(vecs[0]) if vecs else 0
    if body.dimensions is not None and body.dimensions != dim:
        raise InvalidRequest(f"this model's embeddings have {dim} dimensions; it cannot shorten them",
                             param="dimensions")
    m = _state(request).metrics
    m.prompt_tokens.labels(served.id).inc(sum(counts))
    m.e2e.labels(served.id).observe(time.perf_counter() - t0)
    request.state.log.update({"model": served.id, "prompt_tokens": sum(counts), "inputs": len(inputs)})

    def encode(v):
        if body.encoding_format == "base64":
            return base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
        return v

    return {"object": "list", "model": served.id,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vecs)],
            "usage": {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}}


def _embed_locked(served, inputs):
    with served.lock:  # one embedding batch at a time per model; they are quick and memory stays bounded
        return served.encoder.embed(inputs)


async def _any_served_loaded(request: Request, name: str | None):
    await ensure_loaded(request, name)
    return _any_served(request, name)


def _any_served(request: Request, name: str | None):
    pool = _state(request).pool
    if not name and len(pool.models) > 1:
        return _served(request, None, "generate")
    for kind in ("generate", "embed"):
        try:
            return _served(request, name, kind)
        except InvalidRequest:
            continue
    raise AssertionError("unreachable")


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request):
    served = await _any_served_loaded(request, body.model)
    tok = served.tokenizer
    lim = _state(request).limits
    if body.messages is not None:
        limits.check_chat(body, lim)
        if served.engine is None:
            raise InvalidRequest("this model has no chat template", param="messages")
        ids = await run_in_threadpool(served.engine.chat_prompt,
                                      [{"role": m.role, "content": m.text()} for m in body.messages],
                                      add_generation_prompt=body.add_generation_prompt)
    else:
        limits.check_text(body, lim)
        ids = (await run_in_threadpool(tok, body.prompt, add_special_tokens=body.add_special_tokens))["input_ids"]
    request.state.log["model"] = served.id
    return {"tokens": list(ids), "count": len(ids), "max_model_len": served.context_length,
            "token_strs": tok.convert_ids_to_tokens(list(ids))}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request):
    served = await _any_served_loaded(request, body.model)
    vocab = len(served.tokenizer)
    bad = next((t for t in body.tokens if not 0 <= t < vocab), None)
    if bad is not None:
        raise InvalidRequest(f"token id {bad} is out of range (vocabulary of {vocab})", param="tokens")
    request.state.log["model"] = served.id
    return {"prompt": served.tokenizer.decode(body.tokens)}


@router.get("/tokenizer_info")
async def tokenizer_info(request: Request, model: str | None = None):
    """vLLM's /tokenizer_info: the tokenizer's settings and chat template (what lm-evaluation-harness's
    `tokenizer_backend=remote` reads before it tokenizes through /tokenize)."""
    served = await _any_served_loaded(request, model)
    request.state.log["model"] = served.id
    return formats.tokenizer_info(served.tokenizer, served.context_length)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"
