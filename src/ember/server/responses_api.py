"""OpenAI's Responses API on the chat path: POST /v1/responses, GET and DELETE /v1/responses/{id}.

    client.responses.create(model="smollm2-135m-instruct", input="Hi", instructions="Be brief")
    client.responses.create(model=..., input="And then?", previous_response_id=first.id)

Input items (messages, function_call, function_call_output) become chat messages; function tools become chat
tools (server/tools.py renders them and reads calls back); text.format becomes a constraint. Stored
responses (store, default true) live in the registry database (store/responses.py) with the conversation that
led to them, so previous_response_id continues a conversation after a restart or on another replica and
renders exactly the prompt of the same conversation sent whole. Streams send OpenAI's typed events
(`event: response.output_text.delta` ...), each with a sequence_number.
"""

import asyncio
import json
import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from ember.engine.sampling import SamplingParams
from ember.engine.structured import Constraint
from ember.errors import EmberError, InvalidRequest
from ember.server import limits, tools
from ember.server.auth import require_scope
from ember.server.errors import error_body
from ember.server.files_api import owner_of, visible_owner
from ember.server.generation import Run
from ember.server.openai_api import (
    SSEResponse,
    _client_gone,
    _constrained,
    _served,
    _state,
    _unless_disconnected,
)
from ember.server.residency import ensure_loaded
from ember.server.structured_schemas import NoSilentDrops
from ember.store import responses as stored

router = APIRouter(dependencies=[Depends(require_scope("inference"))])


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=(), strict=True)


class TextFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    name: StrictStr | None = None
    schema_: dict | None = Field(None, alias="schema")
    strict: StrictBool | None = None
    description: StrictStr | None = None


class TextConfig(_Body):
    format: TextFormat | None = None
    verbosity: StrictStr | None = None


class ResponsesRequest(NoSilentDrops, _Body):
    model: StrictStr | None = None
    input: StrictStr | list[dict[str, Any]]
    instructions: StrictStr | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    text: TextConfig | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stream: StrictBool = False
    store: StrictBool = True
    previous_response_id: StrictStr | None = None
    metadata: dict[str, Any] | None = None
    user: StrictStr | None = None
    include: list[StrictStr] | None = None
    truncation: Literal["disabled", "auto"] | None = None
    reasoning: dict[str, Any] | None = None
    seed: int | None = None  # not OpenAI's, accepted as vLLM does on its Responses route


def _new(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# ----- input items -> chat messages -----
def _text_of(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}: content must be a string or a list of parts", param="input")
    out = []
    for p in content:
        kind = p.get("type") if isinstance(p, dict) else None
        if kind not in ("input_text", "output_text", "text"):
            raise InvalidRequest(f"content part type {kind!r} is not supported: this server's models read text only",
                                 param="input")
        out.append(p.get("text") or "")
    return "".join(out)


def normalize_items(inp) -> list[dict]:
    """The request's input as a list of plain items (what is stored and what renders the prompt)."""
    if isinstance(inp, str):
        return [{"type": "message", "role": "user", "content": inp}]
    items = []
    for i, it in enumerate(inp):
        kind = it.get("type", "message")
        if kind == "message":
            role = it.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise InvalidRequest(f"input[{i}]: unsupported role {role!r}", param="input")
            items.append({"type": "message", "role": role, "content": _text_of(it.get("content"), f"input[{i}]")})
        elif kind == "function_call":
            if not all(isinstance(it.get(k), str) for k in ("call_id", "name", "arguments")):
                raise InvalidRequest(f"input[{i}]: a function_call needs call_id, name and arguments", param="input")
            items.append({"type": "function_call", "call_id": it["call_id"], "name": it["name"],
                          "arguments": it["arguments"]})
        elif kind == "function_call_output":
            out = it.get("output")
            if not isinstance(it.get("call_id"), str):
                raise InvalidRequest(f"input[{i}]: a function_call_output needs call_id", param="input")
            items.append({"type": "function_call_output", "call_id": it["call_id"],
                          "output": out if isinstance(out, str) else _text_of(out, f"input[{i}]")})
        elif kind == "reasoning":
            continue  # a reasoning summary from another model: nothing to render
        else:
            raise InvalidRequest(f"input[{i}]: item type {kind!r} is not supported", param="input")
    return items


def to_messages(items: list[dict], instructions: str | None) -> list[dict]:
    msgs = [{"role": "system", "content": instructions}] if instructions else []
    for it in items:
        if it["type"] == "message":
            msgs.append({"role": it["role"], "content": it["content"]})
        elif it["type"] == "function_call":
            call = {"id": it["call_id"], "type": "function",
                    "function": {"name": it["name"], "arguments": it["arguments"]}}
            if msgs and msgs[-1]["role"] == "assistant" and msgs[-1].get("tool_calls") is not None:
                msgs[-1]["tool_calls"].append(call)
            else:
                msgs.append({"role": "assistant", "content": "", "tool_calls": [call]})
        else:
            msgs.append({"role": "tool", "content": it["output"], "tool_call_id": it["call_id"]})
    return msgs


def _chat_tools(body: ResponsesRequest) -> tuple[list[dict] | None, Any]:
    out = []
    for i, t in enumerate(body.tools or []):
        if t.get("type") != "function" or not isinstance(t.get("name"), str):
            raise InvalidRequest(f"tools[{i}]: only function tools are supported (type {t.get('type')!r})",
                                 param="tools")
        fn = {"name": t["name"], "parameters": t.get("parameters") or {"type": "object", "properties": {}}}
        if t.get("description"):
            fn["description"] = t["description"]
        out.append({"type": "function", "function": fn})
    choice = body.tool_choice
    if isinstance(choice, dict):
        if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
            raise InvalidRequest("tool_choice: only {'type': 'function', 'name': ...} is supported",
                                 param="tool_choice")
        choice = {"type": "function", "function": {"name": choice["name"]}}
    elif choice not in (None, "auto", "none", "required"):
        raise InvalidRequest(f"invalid tool_choice {choice!r}", param="tool_choice")
    return out or None, choice


def _text_constraint(body: ResponsesRequest) -> Constraint | None:
    f = body.text.format if body.text is not None else None
    if f is None or f.type == "text":
        return None
    if f.type == "json_object":
        return Constraint("json_object", None, "text.format")
    return Constraint("json_schema", f.schema_ or {"type": "object"}, "text.format")


# ----- the response object -----
class Builder:
    """Builds output items from the generated text (through the same call parser as chat), whole or as the
    typed stream events."""

    def __init__(self, body: ResponsesRequest, served, names: set[str] | None, items: list[dict]):
        self.body, self.served, self.names, self.items = body, served, names, items
        self.id = _new("resp")
        self.created = int(time.time())
        self.output: list[dict] = []
        self.seq = 0
        self.parser = tools.CallParser(names or set())
        self.msg: dict | None = None  # the open message item while text streams

    def response(self, status: str, run=None, reason: str | None = None) -> dict:
        b = self.body
        fmt = (b.text.format.model_dump(by_alias=True, exclude_none=True) if b.text and b.text.format
               else {"type": "text"})
        usage = None
        if run is not None:
            usage = {"input_tokens": run.prompt_tokens, "input_tokens_details": {"cached_tokens": run.cached_tokens},
                     "output_tokens": run.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                     "total_tokens": run.prompt_tokens + run.completion_tokens}
        return {"id": self.id, "object": "response", "created_at": self.created, "status": status,
                "error": None,
                "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
                "instructions": b.instructions, "max_output_tokens": b.max_output_tokens, "model": self.served.id,
                "output": self.output, "parallel_tool_calls": b.parallel_tool_calls is not False,
                "previous_response_id": b.previous_response_id, "reasoning": {"effort": None, "summary": None},
                "store": b.store, "temperature": 1.0 if b.temperature is None else b.temperature,
                "text": {"format": fmt}, "tool_choice": b.tool_choice or "auto", "tools": b.tools or [],
                "top_p": 1.0 if b.top_p is None else b.top_p, "truncation": b.truncation or "disabled",
                "usage": usage, "user": b.user, "metadata": b.metadata or {}}

    def _event(self, kind: str, **fields) -> dict:
        self.seq += 1
        return {"type": kind, "sequence_number": self.seq - 1, **fields}

    def feed(self, text: str, final: bool) -> list[dict]:
        events = self.parser.feed(text) + (self.parser.finish() if final else [])
        if self.names is None:  # no tools: everything is text
            events = [("text", e[1]) if e[0] == "text" else e for e in events]
        out = []
        for ev in events:
            if ev[0] == "text":
                out += self._text(ev[1])
            else:
                out += self._close_message()
                out += self._call(ev[1], ev[2])
        if final:
            out += self._close_message()
        return out

    def _text(self, s: str) -> list[dict]:
        out = []
        if self.msg is None:
            self.msg = {"type": "message", "id": _new("msg"), "status": "in_progress", "role": "assistant",
                        "content": []}
            self.output.append(self.msg)
            idx = len(self.output) - 1
            out.append(self._event("response.output_item.added", output_index=idx, item=_copy(self.msg)))
            self.msg["content"].append({"type": "output_text", "text": "", "annotations": [], "logprobs": []})
            out.append(self._event("response.content_part.added", item_id=self.msg["id"], output_index=idx,
                                   content_index=0, part={"type": "output_text", "text": "", "annotations": [],
                                                          "logprobs": []}))
        self.msg["content"][0]["text"] += s
        out.append(self._event("response.output_text.delta", item_id=self.msg["id"],
                               output_index=self.output.index(self.msg), content_index=0, delta=s, logprobs=[]))
        return out

    def _close_message(self) -> list[dict]:
        if self.msg is None:
            return []
        m, self.msg = self.msg, None
        m["status"] = "completed"
        idx = self.output.index(m)
        part = m["content"][0]
        return [self._event("response.output_text.done", item_id=m["id"], output_index=idx, content_index=0,
                            text=part["text"], logprobs=[]),
                self._event("response.content_part.done", item_id=m["id"], output_index=idx, content_index=0,
                            part=_copy(part)),
                self._event("response.output_item.done", output_index=idx, item=_copy(m))]

    def _call(self, name: str, arguments: str) -> list[dict]:
        item = {"type": "function_call", "id": _new("fc"), "call_id": tools.new_call_id(), "name": name,
                "arguments": "", "status": "in_progress"}
        self.output.append(item)
        idx = len(self.output) - 1
        out = [self._event("response.output_item.added", output_index=idx, item=_copy(item)),
               self._event("response.function_call_arguments.delta", item_id=item["id"], output_index=idx,
                           delta=arguments)]
        item["arguments"], item["status"] = arguments, "completed"
        out += [self._event("response.function_call_arguments.done", item_id=item["id"], output_index=idx,
                            name=name, arguments=arguments),
                self._event("response.output_item.done", output_index=idx, item=_copy(item))]
        return out

    def conversation(self) -> list[dict]:
        """The items a continuation renders: this response's input plus its output, as input items."""
        out = list(self.items)
        for it in self.output:
            if it["type"] == "message":
                out.append({"type": "message", "role": "assistant", "content": it["content"][0]["text"]})
            else:
                out.append({"type": "function_call", "call_id": it["call_id"], "name": it["name"],
                            "arguments": it["arguments"]})
        return out


def _copy(x):
    return json.loads(json.dumps(x))


def _sse(ev: dict) -> str:
    return f"event: {ev['type']}\ndata: {json.dumps(ev, ensure_ascii=False, separators=(',', ':'))}\n\n"


# ----- routes -----
@router.post("/v1/responses")
async def create_response(body: ResponsesRequest, request: Request):
    await ensure_loaded(request, body.model, "generate")  # one not in memory loads; the request waits
    served = _served(request, body.model, "generate")
    engine, st = served.engine, _state(request)
    items, owner = [], owner_of(request)[0]
    if body.previous_response_id:  # only the key's own responses (or any, for an admin key)
        _, items = await asyncio.get_running_loop().run_in_executor(
            None, stored.load, body.previous_response_id, st.settings, visible_owner(request))
    items = items + normalize_items(body.input)
    chat_tools, choice = _chat_tools(body)
    ids, constraint, names = tools.prepare_chat(engine, to_messages(items, body.instructions), chat_tools, choice,
                                                body.parallel_tool_calls, _text_constraint(body))
    params = SamplingParams(max_tokens=body.max_output_tokens,
                            temperature=1.0 if body.temperature is None else body.temperature,
                            top_p=1.0 if body.top_p is None else body.top_p, seed=body.seed)
    params = await _constrained(engine, params, constraint)
    engine.check(ids, params, param="input")
    b = Builder(body, served, names, items)
    record = request.state.log
    run = Run(served, [ids], params, st.metrics, record, request_id=request.state.request_id)
    try:
        run.ticket = await limits.admit(request, served)  # the key's rpm/tpm/parallel/budget, as on /v1/chat
        if not await _unless_disconnected(request, run.admit()):
            return _client_gone(run)
        if not body.stream:
            try:
                done, text_reason = await _unless_disconnected(request, _collect(run), result=True)
            finally:
                run.close()
            if not done:
                return _client_gone(run)
            text, reason = text_reason
            b.feed(text, final=True)
            resp = b.response("incomplete" if reason == "length" else "completed", run)
            if body.store:
                await asyncio.get_running_loop().run_in_executor(None, stored.save, resp, b.conversation(),
                                                                 st.settings, owner)
            return resp
        run.start()
        sse = SSEResponse(_stream(run, b, body, st.settings, owner),
                          headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        sse.on_close = run.close
        return sse
    except BaseException:
        run.close(status=400)
        raise


async def _collect(run: Run) -> tuple[str, str | None]:
    text, reason = "", None
    async for _, d in run.events():
        text += d.text
        reason = d.finish_reason or reason
    return text, reason


async def _stream(run: Run, b: Builder, body: ResponsesRequest, settings, owner: str):
    try:
        yield _sse(b._event("response.created", response=b.response("in_progress")))
        yield _sse(b._event("response.in_progress", response=b.response("in_progress")))
        reason = None
        async for _, d in run.events():
            reason = d.finish_reason or reason
            for ev in b.feed(d.text, final=d.finish_reason is not None):
                yield _sse(ev)
        run.close()
        resp = b.response("incomplete" if reason == "length" else "completed", run)
        if body.store:
            await asyncio.get_running_loop().run_in_executor(None, stored.save, resp, b.conversation(), settings,
                                                             owner)
        yield _sse(b._event("response.completed" if reason != "length" else "response.incomplete", response=resp))
    except EmberError as e:
        run.record["error"] = e.message
        yield _sse(b._event("error", **error_body(e.message, e.type, e.param, e.code)["error"]))
    finally:
        run.close()


@router.get("/v1/responses/{response_id}")
async def get_response(response_id: str, request: Request):
    resp, _ = await asyncio.get_running_loop().run_in_executor(None, stored.load, response_id,
                                                               _state(request).settings, visible_owner(request))
    return resp


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, request: Request):
    await asyncio.get_running_loop().run_in_executor(None, stored.delete, response_id, _state(request).settings,
                                                     visible_owner(request))
    return {"id": response_id, "object": "response.deleted", "deleted": True}
