"""Request bodies of the OpenAI-compatible API (pydantic), with vLLM's extra sampling fields.

    curl localhost:8000/v1/chat/completions --json '{"model": "smollm2-135m-instruct",
         "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16, "top_k": 20}'

Ranges are checked here so a bad value is a 400 naming its parameter; strict types stop "10" passing as 10
where OpenAI would refuse it. Unknown fields are ignored, as OpenAI and vLLM do. A request converts itself to
the engine's parameters (`to_sampling_params()`, as vLLM's protocol models do), so the server and
`ember batch` (cli/generate.py, which parses its lines with these same models) cannot drift apart.
Responses are plain dicts built in formats.py, in exactly OpenAI's shapes.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator, model_validator

from ember.engine.sampling import SamplingParams
from ember.errors import InvalidRequest
from ember.server.structured_schemas import (
    GuidedFields,
    NoSilentDrops,
    ResponseFormat,
    ToolCall,
    ToolFields,
    check_parts,
)

Prob = Annotated[float, Field(ge=0, le=1)]
Penalty = Annotated[float, Field(ge=-2, le=2)]
TokenIds = Annotated[list[StrictInt], Field(min_length=1)]


def validation_message(errs: list[dict]) -> tuple[str, str | None]:
    """(message, param) for pydantic's errors(): the server's 400 and `ember batch`'s error records."""
    if not errs:
        return "invalid request body", None
    first = errs[0]
    loc = [p for p in first.get("loc", ()) if p != "body"]
    # pydantic appends union branches ("str", "list[int]") and list indices; the client's name is the field.
    param = str(loc[0]) if loc else None
    msg = first.get("msg", "invalid value")
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    if first.get("type") == "missing" and param:
        return f"missing required parameter {param!r}", param
    return (f"invalid value for {param!r}: {msg}" if param else f"invalid request body: {msg}"), param


class _Body(BaseModel):
    # strict: "5" is not 5 and 1.5 is not an int (OpenAI refuses both); ints still pass as floats.
    model_config = ConfigDict(extra="ignore", protected_namespaces=(), strict=True)


class StreamOptions(_Body):
    include_usage: StrictBool = False


class SamplingFields(_Body):
    """Fields shared by completions and chat completions."""

    model: StrictStr | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: StrictStr | Annotated[list[StrictStr], Field(max_length=16)] | None = None
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    seed: StrictInt | None = None
    user: StrictStr | None = None
    # vLLM's extras
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Prob | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=10)] | None = None
    best_of: Annotated[int, Field(ge=1, le=32)] | None = None
    use_beam_search: StrictBool = False
    length_penalty: float = 1.0
    early_stopping: StrictBool | Literal["never"] = False
    stop_token_ids: list[StrictInt] | None = None
    ignore_eos: StrictBool = False
    skip_special_tokens: StrictBool = True
    prompt_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None  # vLLM: logprobs of the prompt's tokens
    # vLLM's: prefix-cache reuse only between requests of the same key that give the same salt
    cache_salt: Annotated[str, Field(max_length=256)] | None = None

    @model_validator(mode="after")
    def _check(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError("best_of must be >= n")
        if self.stream and self.best_of and self.best_of > self.n and not self.use_beam_search:
            raise ValueError("best_of > n cannot be streamed")
        return self

    def _sampling_params(self, max_tokens: int | None, logprobs: int | None,
                         prompt_logprobs: int | None) -> SamplingParams:
        try:
            bias = {int(k): float(v) for k, v in (self.logit_bias or {}).items()}
        except ValueError:
            raise InvalidRequest("logit_bias keys must be token ids", param="logit_bias") from None
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        kw = dict(max_tokens=max_tokens, temperature=1.0 if self.temperature is None else self.temperature,
                  top_p=1.0 if self.top_p is None else self.top_p, top_k=self.top_k or 0, min_p=self.min_p or 0.0,
                  repetition_penalty=self.repetition_penalty or 1.0, presence_penalty=self.presence_penalty,
                  frequency_penalty=self.frequency_penalty, logit_bias=bias, seed=self.seed, stop=stop,
                  stop_token_ids=list(self.stop_token_ids or []), ignore_eos=self.ignore_eos, n=self.n,
                  logprobs=logprobs, prompt_logprobs=prompt_logprobs, skip_special_tokens=self.skip_special_tokens)
        if self.use_beam_search:
            kw.update(use_beam_search=True, num_beams=max(self.best_of or 0, self.n, 2 if self.best_of else 4),
                      length_penalty=self.length_penalty, early_stopping=self.early_stopping)
        elif self.best_of and self.best_of > self.n:
            kw.update(n=self.best_of, logprobs=max(logprobs or 0, 0))  # ranked by logprob, best n returned
        return SamplingParams(**kw)


Prompt = StrictStr | Annotated[list[StrictStr], Field(min_length=1)] | TokenIds | \
    Annotated[list[TokenIds], Field(min_length=1)]


class CompletionRequest(NoSilentDrops, GuidedFields, SamplingFields):
    prompt: Prompt
    # 0 with echo: score the prompt, generate nothing (what OpenAI's legacy API and vLLM allow)
    max_tokens: Annotated[int, Field(ge=0)] | None = None
    echo: StrictBool = False
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    suffix: StrictStr | None = None

    @model_validator(mode="after")
    def _check_completion(self):
        if self.max_tokens == 0 and not self.echo and self.prompt_logprobs is None:
            raise ValueError("max_tokens may be 0 only with echo or prompt_logprobs (scoring the prompt)")
        return self

    def to_sampling_params(self) -> SamplingParams:
        if self.suffix:
            raise InvalidRequest("suffix is not supported", param="suffix")
        # echo + logprobs: the prompt's tokens come back with their logprobs before the generated ones.
        plp = self.prompt_logprobs
        if self.echo and self.logprobs is not None:
            plp = max(plp or 0, self.logprobs)
        return self._sampling_params(16 if self.max_tokens is None else self.max_tokens, self.logprobs, plp)


class TextPart(_Body):
    type: Literal["text", "input_text", "output_text"]
    text: StrictStr


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCall] | None = None  # assistant turns that called tools
    tool_call_id: StrictStr | None = None  # role "tool": the call this result answers

    @field_validator("content", mode="before")
    @classmethod
    def _parts(cls, v):
        return check_parts(v)

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatRequest(NoSilentDrops, GuidedFields, ToolFields, SamplingFields):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: StrictBool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    add_generation_prompt: StrictBool = True
    echo: StrictBool = False

    @model_validator(mode="after")
    def _check_chat(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return self

    def to_sampling_params(self) -> SamplingParams:
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        return self._sampling_params(max_tokens, (self.top_logprobs or 0) if self.logprobs else None,
                                     self.prompt_logprobs)

    def message_dicts(self) -> list[dict]:
        """The messages as the chat template reads them."""
        return [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})} for m in self.messages]


class EmbeddingRequest(_Body):
    model: StrictStr | None = None
    input: StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=2048)] | TokenIds | \
        Annotated[list[TokenIds], Field(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: StrictStr | None = None


class TokenizeRequest(_Body):
    model: StrictStr | None = None
    prompt: StrictStr | None = None
    messages: Annotated[list[Message], Field(min_length=1)] | None = None
    add_special_tokens: StrictBool = True
    add_generation_prompt: StrictBool = True

    @model_validator(mode="after")
    def _one(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


class DetokenizeRequest(_Body):
    model: StrictStr | None = None
    tokens: list[StrictInt]
