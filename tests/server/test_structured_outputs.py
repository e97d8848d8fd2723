"""Structured outputs and tool calling on chat/completions, driven by the real clients (openai, LangChain)
against a real `ember serve` with the bundled SmolLM2 (the module's shared `server`)."""

import concurrent.futures
import json
import threading
import time

import httpx
import pytest
from openai import BadRequestError, OpenAI
from pydantic import BaseModel, Field

MODEL = "smollm2-135m-instruct"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}},
                   "required": ["city"]}}}


class City(BaseModel):
    name: str = Field(max_length=20)
    population: int = Field(ge=0, le=100_000_000)


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=600)


def _parallel(fn, args):
    with concurrent.futures.ThreadPoolExecutor(len(args)) as ex:
        return list(ex.map(fn, args))


def test_parse_pydantic_model_20_seeds_at_temperature_1(client):
    def one(seed):
        r = client.chat.completions.parse(model=MODEL, response_format=City, temperature=1.0, seed=seed,
                                          max_tokens=40, messages=[{"role": "user", "content": "Describe Paris."}])
        return r.choices[0]

    choices = _parallel(one, list(range(20)))
    assert all(c.finish_reason == "stop" for c in choices)
    assert all(isinstance(c.message.parsed, City) for c in choices)  # parse() validated each one


def test_json_object_always_parses(client):
    def one(seed):
        return client.chat.completions.create(
            model=MODEL, response_format={"type": "json_object"}, temperature=1.0, seed=seed, max_tokens=48,
            messages=[{"role": "user", "content": "Give me a JSON object describing a cat."}]).choices[0]

    for c in _parallel(one, list(range(4))):
        if c.finish_reason == "stop":
            assert isinstance(json.loads(c.message.content), dict)


def test_guided_choice_and_regex_on_both_routes(client):
    choices = ["yes", "no", "maybe"]
    for seed in range(3):
        r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Is the sky green?"}],
                                           temperature=1.0, seed=seed, max_tokens=5,
                                           extra_body={"guided_choice": choices})
        assert r.choices[0].message.content in choices
    r = client.completions.create(model=MODEL, prompt="Call me at", max_tokens=12, temperature=1.0, seed=1,
                                  extra_body={"structured_outputs": {"regex": "[0-9]{3}-[0-9]{4}"}})
    assert r.choices[0].finish_reason == "stop"
    assert len(r.choices[0].text) == 8 and r.choices[0].text[3] == "-"


def test_langchain_structured_output_and_forced_tool(server):
    from langchain_openai import ChatOpenAI

    class Country(BaseModel):
        name: str = Field(max_length=20)
        capital: str = Field(max_length=20)

    llm = ChatOpenAI(model=MODEL, base_url=server.v1, api_key="unused", max_tokens=40, temperature=0)
    out = llm.with_structured_output(Country).invoke("Describe France.")
    assert isinstance(out, Country)

    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return "sunny"

    msg = llm.bind_tools([get_weather], tool_choice="get_weather").invoke("What is the weather in Paris?")
    assert len(msg.tool_calls) == 1 and msg.tool_calls[0]["name"] == "get_weather"
    assert isinstance(msg.tool_calls[0]["args"]["city"], str)


def test_streamed_tool_calls_equal_the_whole_response(client):
    kw = {"model": MODEL, "messages": [{"role": "user", "content": "What is the weather in Rome?"}],
          "tools": [WEATHER], "tool_choice": "required", "temperature": 1.0, "seed": 5, "max_tokens": 40}
    whole = client.chat.completions.create(**kw).choices[0]
    assert whole.finish_reason == "tool_calls"
    call = whole.message.tool_calls[0]
    assert call.id.startswith("call_") and call.type == "function"
    assert isinstance(json.loads(call.function.arguments)["city"], str)

    calls, finish, first = {}, None, {}
    for chunk in client.chat.completions.create(**kw, stream=True):
        for ch in chunk.choices:
            for tc in ch.delta.tool_calls or []:
                c = calls.setdefault(tc.index, {"id": tc.id, "name": tc.function.name, "arguments": ""})
                first.setdefault(tc.index, tc)
                c["arguments"] += tc.function.arguments or ""
            finish = ch.finish_reason or finish
    assert finish == "tool_calls"
    assert first[0].id and first[0].function.name == "get_weather"  # id and name come first
    assert [(c["name"], c["arguments"]) for c in calls.values()] == \
        [(t.function.name, t.function.arguments) for t in whole.message.tool_calls]


def test_tool_choice_none_gives_no_call_and_history_renders(client, server):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Weather in Oslo?"}],
                                       tools=[WEATHER], tool_choice="none", max_tokens=8, temperature=0)
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason in ("stop", "length")

    # A second turn: the assistant's call and the tool's result are in the prompt (Hermes fallback: SmolLM2's
    # template does not take tools), exactly as documented in server/tools.py.
    history = [{"role": "user", "content": "Weather in Oslo?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                     "arguments": '{"city": "Oslo"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "rainy, 7 C"}]
    r = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], max_tokens=1, temperature=0)
    tools_block = json.dumps(WEATHER)
    expected = ("<|im_start|>system\n# Tools\n\nYou may call one or more functions to assist with the user query."
                "\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
                f"{tools_block}\n</tools>\n\nFor each function call, return a json object with function name and "
                "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
                "\"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n"
                "<|im_start|>user\nWeather in Oslo?<|im_end|>\n"
                "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}"
                "\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\nrainy, 7 C\n</tool_response><|im_end|>\n"
                "<|im_start|>assistant\n")
    count = httpx.post(server.url + "/tokenize", json={"model": MODEL, "prompt": expected,
                                                       "add_special_tokens": False}, timeout=60).json()["count"]
    assert r.usage.prompt_tokens == count


def test_pathological_schema_and_regex_are_400_fast_while_a_stream_flows(client):
    got = []

    def stream():
        for _chunk in client.chat.completions.create(model=MODEL,
                                                     messages=[{"role": "user", "content": "Tell a story."}],
                                                     max_tokens=48, temperature=0, stream=True):
            got.append(time.monotonic())

    t = threading.Thread(target=stream)
    t.start()
    while not got:
        time.sleep(0.05)
    deep = {"type": "object", "properties": {}}
    node = deep
    for _ in range(200):
        node["properties"]["a"] = {"type": "object", "properties": {}}
        node = node["properties"]["a"]
    bad = [{"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": deep}}},
           {"extra_body": {"guided_regex": "(a+)+b"}},
           {"extra_body": {"guided_regex": "(x{1,1000}){1,1000}"}},
           {"extra_body": {"guided_json": {"type": "string", "pattern": "^(\\w+\\s?)*$"}}},
           {"extra_body": {"guided_regex": "[a-"}},
           {"extra_body": {"guided_json": {"type": "object", "properties": {"a": {"type": "strin"}}}}}]
    for kw in bad:
        t0 = time.monotonic()
        with pytest.raises(BadRequestError) as e:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=4, **kw)
        assert time.monotonic() - t0 < 1.0, kw
        assert e.value.status_code == 400
    before = len(got)
    t.join()
    assert len(got) > before  # the stream kept flowing


def test_no_silent_drops(client):
    msgs = [{"role": "user", "content": "Hi"}]
    with pytest.raises(BadRequestError, match="'audio'"):
        client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2, extra_body={"audio": {"voice": "x"}})
    with pytest.raises(BadRequestError, match="image_url"):
        client.chat.completions.create(model=MODEL, max_tokens=2, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]}])
    with pytest.raises(BadRequestError, match="beam search"):
        client.completions.create(model=MODEL, prompt="x", max_tokens=2,
                                  extra_body={"use_beam_search": True, "guided_choice": ["a", "b"]})
    # harmless extras are accepted and ignored
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2, user="u", metadata={"k": "v"},
                                       store=False)
    assert r.choices[0].message.content is not None
