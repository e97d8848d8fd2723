"""Request fields for structured output and tool calling (mixed into server/schemas.py's request bodies), and
the rule that no field changing the result is dropped silently.

    curl localhost:8000/v1/chat/completions -d '{"messages": [...], "response_format": {"type": "json_schema",
         "json_schema": {"name": "city", "schema": {"type": "object", "properties": {"name": {"type": "string"}}}}}}'
    curl localhost:8000/v1/completions -d '{"prompt": "Yes or no?", "guided_choice": ["yes", "no"]}'

OpenAI's `response_format`, vLLM's `guided_json` / `guided_regex` / `guided_choice` / `guided_grammar` and
vLLM's newer `structured_outputs` object all become one `engine.structured.Constraint`. A request may carry at
most one of them. Unknown top-level fields are a 400 naming the field unless they are in HARMLESS_EXTRAS
(fields that never change the generated text).
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr, model_validator

from ember.engine.structured import Constraint
from ember.errors import InvalidRequest

# Accepted and ignored: bookkeeping fields of OpenAI's and vLLM's APIs and the clients that send them.
HARMLESS_EXTRAS = frozenset({
    "user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier", "priority",
    "request_id", "guided_decoding_backend", "stream_options", "return_tokens_as_token_ids",
})
# Known fields Ember does not implement, with the reason given in the 400.
UNSUPPORTED = {
    "functions": "use 'tools' instead of the deprecated 'functions'",
    "function_call": "use 'tool_choice' instead of the deprecated 'function_call'",
    "audio": "this server generates text only", "modalities": "this server generates text only",
    "prediction": "predicted outputs are not supported", "web_search_options": "web search is not supported",
    "reasoning_effort": "this server's models have no reasoning mode",
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=(), strict=True)


class NoSilentDrops(BaseModel):
    """Mixin: an unknown top-level field is a 400 naming it (unless it is a harmless extra)."""

    @model_validator(mode="before")
    @classmethod
    def _no_silent_drops(cls, data):
        if isinstance(data, dict):
            names = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
            for key in data:
                if key in names or key in HARMLESS_EXTRAS:
                    continue
                why = UNSUPPORTED.get(key, "Ember does not implement it")
                raise InvalidRequest(f"unsupported parameter {key!r}: {why}", param=key)
        return data


class JsonSchemaSpec(_Body):
    name: StrictStr = "response"
    description: StrictStr | None = None
    schema_: dict | None = None
    strict: StrictBool | None = None

    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _alias(cls, data):
        if isinstance(data, dict) and "schema" in data:
            data = {**data, "schema_": data["schema"]}
            data.pop("schema")
        return data


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _check(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("json_schema is required when type is 'json_schema'")
        return self


class StructuredOutputs(_Body):
    """vLLM's `structured_outputs` object (the successor of the guided_* fields)."""

    json_: dict | StrictStr | None = None
    regex: StrictStr | None = None
    choice: list[StrictStr] | None = None
    grammar: StrictStr | None = None
    json_object: StrictBool | None = None

    @model_validator(mode="before")
    @classmethod
    def _alias(cls, data):
        if isinstance(data, dict) and "json" in data:
            data = {**data, "json_": data["json"]}
            data.pop("json")
        return data


class GuidedFields(BaseModel):
    """vLLM's guided decoding extras, accepted on completions and chat."""

    guided_json: dict | StrictStr | None = None
    guided_regex: StrictStr | None = None
    guided_choice: list[StrictStr] | None = None
    guided_grammar: StrictStr | None = None
    guided_whitespace_pattern: StrictStr | None = None
    structured_outputs: StructuredOutputs | None = None


def constraint_of(body) -> Constraint | None:
    """The one constraint a request asks for (response_format, guided_* or structured_outputs), or None."""
    found: list[Constraint] = []
    rf = getattr(body, "response_format", None)
    if rf is not None and rf.type == "json_object":
        found.append(Constraint("json_object", None, "response_format"))
    elif rf is not None and rf.type == "json_schema":
        found.append(Constraint("json_schema", rf.json_schema.schema_ or {"type": "object"}, "response_format"))
    if body.guided_whitespace_pattern is not None:
        raise InvalidRequest("guided_whitespace_pattern is not supported", param="guided_whitespace_pattern")
    for field, kind in (("guided_json", "json_schema"), ("guided_regex", "regex"), ("guided_choice", "choice"),
                        ("guided_grammar", "grammar")):
        v = getattr(body, field)
        if v is not None:
            found.append(Constraint(kind, v, field))
    so = body.structured_outputs
    if so is not None:
        for field, kind in (("json_", "json_schema"), ("regex", "regex"), ("choice", "choice"),
                            ("grammar", "grammar")):
            v = getattr(so, field)
            if v is not None:
                found.append(Constraint(kind, v, "structured_outputs"))
        if so.json_object:
            found.append(Constraint("json_object", None, "structured_outputs"))
    if len(found) > 1:
        raise InvalidRequest("give at most one of response_format, guided_json, guided_regex, guided_choice, "
                             "guided_grammar and structured_outputs", param=found[1].param)
    return found[0] if found else None


# ----- tools (chat) -----
class FunctionDef(_Body):
    name: StrictStr
    description: StrictStr | None = None
    parameters: dict | None = None
    strict: StrictBool | None = None

    @model_validator(mode="after")
    def _name(self):
        if not self.name or len(self.name) > 64 or not all(ch.isalnum() or ch in "_-." for ch in self.name):
            raise ValueError("a function name must be 1-64 letters, digits, '_', '-' or '.'")
        return self


class ToolDef(_Body):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Body):
    name: StrictStr


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: NamedFunction


class ToolFields(BaseModel):
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None


class ToolCallFunction(_Body):
    name: StrictStr
    arguments: StrictStr


class ToolCall(_Body):
    id: StrictStr
    type: Literal["function"] = "function"
    function: ToolCallFunction


def check_parts(content: Any) -> Any:
    """Content parts Ember cannot use are a 400 naming the part type (a model here reads text only)."""
    if isinstance(content, list):
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in ("text", "input_text", "output_text"):
                raise ValueError(f"content part type {kind!r} is not supported: this server's models read text only")
    return content
