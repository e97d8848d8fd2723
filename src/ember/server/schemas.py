"""Request bodies of the OpenAI-compatible API (pydantic), with vLLM's extra sampling fields.

    curl localhost:8000/v1/chat/completions -d '{"model": "smollm2-135m-instruct",
         "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16, "top_k": 20}'

Ranges are checked here so a bad value is a 400 naming its parameter; strict types stop "10" passing as 10
where OpenAI would refuse it. Unknown fields are ignored, as OpenAI and vLLM do. Responses are plain dicts
built in openai_api.py, in exactly OpenAI's shapes.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator, model_validator

from ember.server.structured_schemas import (GuidedFields, NoSilentDrops, ResponseFormat, ToolCall, ToolFields,
                                             check_parts)

Prob = Annotated[float, Field(ge=0, le=1)]
Penalty = Annotated[float, Field(ge=-2, le=2)]
TokenIds = Annotated[list[StrictInt], Field(min_length=1)]


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

    @model_validator(mode="after")
    def _check(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError("best_of must be >= n")
        if self.stream and self.best_of and self.best_of > self.n and not self.use_beam_search:
            raise ValueError("best_of > n cannot be streamed")
        return self


Prompt = StrictStr | Annotated[list[StrictStr], Field(min_length=1)] | TokenIds | \
    Annotated[list[TokenIds], Field(min_length=1)]


class CompletionRequest(NoSilentDrops, GuidedFields, SamplingFields):
    prompt: Prompt
    echo: StrictBool = False
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    suffix: StrictStr | None = None


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
