"""Tool calling on chat: tools into the prompt, tool calls out of the text, and OpenAI's tool_calls shapes.

    client.chat.completions.create(model="smollm2-135m-instruct", messages=[...], tools=[{"type": "function",
        "function": {"name": "get_weather", "parameters": {...}}}], tool_choice="required")

Rendering: a chat template that mentions `tools` gets them through `apply_chat_template(tools=...)`, with
assistant tool calls and `role: tool` results in the message list as transformers' templates expect. Any
other template gets the Hermes-style fallback: a system block listing the tools as JSON inside <tools></tools>
and asking for `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` replies; earlier calls are written
back in that form and results as `<tool_response>` turns. Calls are read back out of the text in that form.

tool_choice: "none" renders no tools and parses nothing; "auto" parses whatever calls the model writes;
"required" and a named function constrain decoding with a grammar (engine/structured.py), so the reply is one
or more calls whose arguments validate against each function's parameters schema.
"""

import json
import uuid

from ember.engine.structured import Constraint, closed_objects
from ember.errors import InvalidRequest
from ember.server import formats

OPEN, CLOSE = "<tool_call>", "</tool_call>"

FALLBACK_PROMPT = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def template_supports_tools(tokenizer) -> bool:
    tpl = getattr(tokenizer, "chat_template", None)
    if isinstance(tpl, dict):
        tpl = tpl.get("tool_use") or tpl.get("default") or ""
    return bool(tpl) and "tools" in tpl


def _args_obj(arguments: str):
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def render(engine, messages: list[dict], tools: list[dict] | None, add_generation_prompt: bool = True) -> list[int]:
    """OpenAI chat messages (dicts; assistant `tool_calls`, `tool`/`function` results) + tool definitions
    -> prompt token ids, through the model's template when it supports tools, else the Hermes fallback."""
    msgs = [dict(m) for m in messages]
    for m in msgs:
        if m["role"] == "function":  # the deprecated form of a tool result
            m["role"] = "tool"
    supports = template_supports_tools(engine.tokenizer)
    if supports or (not tools and not _has_tool_turns(msgs)):
        native = []
        for m in msgs:
            m = {k: v for k, v in m.items() if v is not None}
            if m.get("tool_calls"):
                m["tool_calls"] = [{"id": c["id"], "type": "function",
                                    "function": {"name": c["function"]["name"],
                                                 "arguments": _args_obj(c["function"]["arguments"])}}
                                   for c in m["tool_calls"]]
            m.setdefault("content", "")
            native.append(m)
        return engine.chat_prompt(native, add_generation_prompt=add_generation_prompt,
                                  tools=tools if supports and tools else None)
    return engine.chat_prompt(fallback_messages(msgs, tools), add_generation_prompt=add_generation_prompt)


def _has_tool_turns(msgs: list[dict]) -> bool:
    return any(m.get("tool_calls") or m["role"] == "tool" for m in msgs)


def fallback_messages(msgs: list[dict], tools: list[dict] | None) -> list[dict]:
    """The Hermes-style rendering as plain role/content messages any chat template can take."""
    out = []
    for m in msgs:
        content = m.get("content") or ""
        if m.get("tool_calls"):
            calls = [OPEN + "\n" + json.dumps({"name": c["function"]["name"],
                                                "arguments": _args_obj(c["function"]["arguments"])},
                                               ensure_ascii=False) + "\n" + CLOSE for c in m["tool_calls"]]
            content = "\n".join(([content] if content else []) + calls)
            out.append({"role": "assistant", "content": content})
        elif m["role"] == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
        else:
            out.append({"role": m["role"], "content": content})
    if tools:
        block = FALLBACK_PROMPT.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
        if out and out[0]["role"] in ("system", "developer"):
            out[0] = {"role": out[0]["role"], "content": out[0]["content"] + "\n\n" + block}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


def tool_constraint(tools: list[dict], choice, parallel: bool | None) -> Constraint | None:
    """A grammar forcing calls (tool_choice "required" or a named function); None for auto/none."""
    if choice in (None, "auto", "none"):
        return None
    names = [t["function"]["name"] for t in tools]
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        if name not in names:
            raise InvalidRequest(f"tool_choice names {name!r}, which is not in tools", param="tool_choice")
        names, multiple = [name], False
    else:  # several calls only when asked for explicitly: a small model otherwise keeps calling to max_tokens
        multiple = parallel is True
    rules = []
    by_name = {t["function"]["name"]: t["function"] for t in tools}
    for i, name in enumerate(names):
        params = closed_objects(by_name[name].get("parameters") or {"type": "object"})
        schema = {"type": "object", "properties": {"name": {"const": name}, "arguments": params},
                  "required": ["name", "arguments"], "additionalProperties": False,
                  "x-guidance": {"whitespace_flexible": False}}
        rules.append(f"fn{i}: %json {json.dumps(schema)}")
    body = " | ".join(f"fn{i}" for i in range(len(names)))
    start = 'start: call ("\\n" call)*' if multiple else "start: call"
    lark = "\n".join([start, f'call: "{OPEN}\\n" body "\\n{CLOSE}"', f"body: {body}", *rules])
    return Constraint("grammar", lark, "tools")


class CallParser:
    """Splits generated text into content and <tool_call> blocks, incrementally (the stream and the whole
    response use the same parser, so both give the same calls and the same content). Whitespace-only text
    is held back until something else follows it."""

    def __init__(self, names: set[str]):
        self.names = names
        self.buf = ""
        self.inside = False
        self.pending_ws = ""
        self.calls = 0

    def feed(self, text: str) -> list[tuple]:
        self.buf += text
        events = []
        while True:
            if not self.inside:
                i = self.buf.find(OPEN)
                if i < 0:
                    keep = _partial_suffix(self.buf, OPEN)
                    self._text(self.buf[: len(self.buf) - keep], events)
                    self.buf = self.buf[len(self.buf) - keep:]
                    return events
                self._text(self.buf[:i], events)
                self.buf = self.buf[i:]
                self.inside = True
            j = self.buf.find(CLOSE)
            if j < 0:
                return events
            block, self.buf = self.buf[: j + len(CLOSE)], self.buf[j + len(CLOSE):]
            self.inside = False
            self._block(block, events)

    def finish(self) -> list[tuple]:
        events = []
        if self.inside:
            self._block(self.buf, events)
        else:
            self._text(self.buf, events)
        self.buf = ""
        self.inside = False
        return events

    def _text(self, s: str, events: list) -> None:
        if not s:
            return
        if not s.strip():
            self.pending_ws += s
            return
        if self.calls:  # text between or after calls: keep it, but not the separators around calls
            s = (self.pending_ws + s).strip() and (self.pending_ws + s)
        else:
            s = self.pending_ws + s
        self.pending_ws = ""
        events.append(("text", s))

    def _block(self, block: str, events: list) -> None:
        inner = block[len(OPEN):]
        inner = inner.removesuffix(CLOSE)
        call = _parse_call(inner, self.names)
        if call is None:
            self._text(block, events)
            return
        self.pending_ws = ""
        self.calls += 1
        events.append(("call", call[0], call[1]))


def _partial_suffix(s: str, tag: str) -> int:
    """Length of the longest suffix of s that is a proper prefix of tag (text that may still become tag)."""
    for k in range(min(len(tag) - 1, len(s)), 0, -1):
        if s.endswith(tag[:k]):
            return k
    return 0


def _parse_call(inner: str, names: set[str]) -> tuple[str, str] | None:
    try:
        obj = json.loads(inner.strip())
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return obj["name"], json.dumps(args, ensure_ascii=False)


def parse_all(text: str, names: set[str]) -> tuple[str | None, list[dict]]:
    """Whole text -> (content or None, [OpenAI tool_call dicts])."""
    p = CallParser(names)
    events = p.feed(text) + p.finish()
    content = "".join(e[1] for e in events if e[0] == "text")
    calls = [{"id": new_call_id(), "type": "function", "function": {"name": e[1], "arguments": e[2]}}
             for e in events if e[0] == "call"]
    return (content or None) if calls else content, calls


class ToolChatFormat(formats.ChatFormat):
    """ChatFormat for requests with tools (auto, required or named): message.tool_calls, finish_reason
    "tool_calls", and streamed `delta.tool_calls` (index, id and name first, then the arguments)."""

    def __init__(self, served, prompts, body, names: set[str]):
        super().__init__(served, prompts, body)
        self.names = names
        self.parsers: dict[tuple[int, int], CallParser] = {}

    def _chunk(self, index: int, delta: dict, include_usage: bool, lps=None, finish=None) -> dict:
        return {**self._head(self.object_chunk, include_usage),
                "choices": [{"index": index, "delta": delta, "logprobs": lps, "finish_reason": finish}]}

    def stream_delta(self, pi: int, d, include_usage: bool) -> list[dict]:
        index = pi * self.n + d.index
        p = self.parsers.setdefault((pi, d.index), CallParser(self.names))
        events = p.feed(d.text) + (p.finish() if d.finish_reason is not None else [])
        lps = self._logprobs(d.logprobs) if self.want_logprobs and d.logprobs else None
        out = []
        for ev in events:
            if ev[0] == "text":
                out.append(self._chunk(index, {"content": ev[1]}, include_usage, lps))
            else:
                k = p.calls_sent = getattr(p, "calls_sent", 0)
                p.calls_sent += 1
                out.append(self._chunk(index, {"tool_calls": [
                    {"index": k, "id": new_call_id(), "type": "function",
                     "function": {"name": ev[1], "arguments": ""}}]}, include_usage, lps))
                out.append(self._chunk(index, {"tool_calls": [{"index": k, "function": {"arguments": ev[2]}}]},
                                       include_usage))
            lps = None
        if lps is not None:
            out.append(self._chunk(index, {"content": ""}, include_usage, lps))
        if d.finish_reason is not None:
            reason = formats._reason(d.finish_reason)
            if reason == "stop" and p.calls:
                reason = "tool_calls"
            out.append(self._chunk(index, {}, include_usage, None, reason))
        return out

    def full(self, accs: dict, run, n: int) -> dict:
        choices = []
        for index, c in self._ranked(accs):
            content, calls = parse_all(c.text, self.names)
            msg = {"role": "assistant", "content": content, "refusal": None}
            reason = formats._reason(c.finish_reason)
            if calls:
                msg["tool_calls"] = calls
                reason = "tool_calls" if reason == "stop" else reason
            choices.append({"index": index, "message": msg,
                            "logprobs": self._logprobs(c.logprobs) if self.want_logprobs else None,
                            "finish_reason": reason})
        return {**self._head(self.object_full), "choices": choices, "usage": usage_of(run)}


def usage_of(run) -> dict:
    return formats.usage(run)


def chat_messages(body_messages) -> list[dict]:
    """Validated Message models -> plain dicts (text content, tool calls, tool results)."""
    out = []
    for m in body_messages:
        d = {"role": m.role, "content": m.text()}
        if m.name:
            d["name"] = m.name
        if m.tool_calls:
            d["tool_calls"] = [c.model_dump() for c in m.tool_calls]
        if m.tool_call_id:
            d["tool_call_id"] = m.tool_call_id
        out.append(d)
    return out


def prepare_chat(engine, messages: list[dict], tools: list[dict] | None, tool_choice, parallel: bool | None,
                 constraint: Constraint | None, add_generation_prompt: bool = True):
    """-> (prompt ids, the constraint to decode under or None, the tool names to parse calls for or None)."""
    if tool_choice not in (None, "none", "auto") and not tools:
        raise InvalidRequest("tool_choice requires tools", param="tool_choice")
    if tool_choice == "none":
        tools = None
    forced = tool_constraint(tools, tool_choice, parallel) if tools else None
    if forced is not None and constraint is not None:
        raise InvalidRequest("a structured output format cannot be combined with a forced tool_choice",
                             param="tool_choice")
    ids = render(engine, messages, tools, add_generation_prompt)
    names = {t["function"]["name"] for t in tools} if tools else None
    return ids, forced or constraint, names
