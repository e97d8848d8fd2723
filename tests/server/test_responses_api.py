"""/v1/responses with the real clients (openai, openai-agents) against a real `ember serve`: the bundled SmolLM2
and a tiny random model with SmolLM2's template (no tool support: the Hermes fallback), in a home of its own
because stored responses are written to its registry database."""

import asyncio
import json

import pytest
from openai import NotFoundError, OpenAI

MODEL = "smollm2-135m-instruct"
TOOLS = [{"type": "function", "name": "get_weather", "description": "Get the current weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}},
                         "required": ["city"]}}]


@pytest.fixture(scope="module")
def home(tmp_path_factory, smollm2_dir, tiny_chat_dir):
    from ember.config import Settings
    from ember.store import registry

    h = tmp_path_factory.mktemp("responses-home")
    settings = Settings(home=h)
    registry.register_folder(smollm2_dir, MODEL, settings=settings)
    registry.register_folder(tiny_chat_dir, "tiny", settings=settings)
    return h


@pytest.fixture(scope="module")
def served(start_server, home):
    return start_server(home, "--model", MODEL, "--model", "tiny", "--max-slots", 8)


@pytest.fixture(scope="module")
def client(served):
    return OpenAI(base_url=served.v1, api_key="unused", max_retries=0, timeout=600)


def test_agent_with_a_function_tool_runs_to_completion(served):
    from agents import (
        Agent,
        ModelSettings,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    calls = []

    @function_tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        calls.append(city)
        return f"It is sunny in {city}."

    # tool_choice="required" on the first turn; the SDK resets it to auto after the call (reset_tool_choice).
    agent = Agent(name="weather", instructions="Answer with the weather tool.", tools=[get_weather],
                  model=OpenAIResponsesModel(model=MODEL, openai_client=AsyncOpenAI(base_url=served.v1,
                                                                                   api_key="unused")),
                  model_settings=ModelSettings(tool_choice="required", max_tokens=40, temperature=0))
    result = asyncio.run(Runner.run(agent, "What is the weather in Paris?", max_turns=4))
    assert len(calls) == 1 and isinstance(calls[0], str) and calls[0]
    assert isinstance(result.final_output, str) and result.final_output


def test_stream_events_and_text_format(client):
    events = list(client.responses.create(model=MODEL, input="Say hello.", max_output_tokens=8, temperature=0,
                                          stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    final = events[-1].response
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text and final.usage.output_tokens > 0
    assert [e.sequence_number for e in events] == list(range(len(events)))

    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}}, "required": ["city"]}
    r = client.responses.create(model=MODEL, input="Name a city.", max_output_tokens=30, temperature=1.0,
                                extra_body={"seed": 2},
                                text={"format": {"type": "json_schema", "name": "c", "schema": schema}})
    assert r.status == "completed" and isinstance(json.loads(r.output_text)["city"], str)


def test_streamed_function_call_equals_whole_on_the_fallback_template(client):
    kw = {"model": "tiny", "input": "weather in Oslo", "tools": TOOLS, "tool_choice": "required",
          "max_output_tokens": 40, "temperature": 1.0, "extra_body": {"seed": 3}}
    whole = client.responses.create(**kw)
    calls = [o for o in whole.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].call_id.startswith("call_")
    assert isinstance(json.loads(calls[0].arguments)["city"], str)  # a random model, but the grammar holds
    streamed = [e for e in client.responses.create(**kw, stream=True)]
    args = "".join(e.delta for e in streamed if e.type == "response.function_call_arguments.delta")
    assert args == calls[0].arguments
    r = client.responses.create(model="tiny", input="weather?", tools=TOOLS, tool_choice="none",
                                max_output_tokens=8)
    assert all(o.type == "message" for o in r.output)


def test_previous_response_id_survives_a_restart(client, served, start_server, home):
    first = client.responses.create(model=MODEL, input="My name is Ada.", max_output_tokens=12, temperature=0)
    served.stop()
    again = start_server(home, "--model", MODEL, "--model", "tiny", "--max-slots", 8)
    c2 = OpenAI(base_url=again.v1, api_key="unused", max_retries=0, timeout=600)
    assert c2.responses.retrieve(first.id).output_text == first.output_text
    cont = c2.responses.create(model=MODEL, input="What is my name?", previous_response_id=first.id,
                               max_output_tokens=8, temperature=0)
    whole = c2.responses.create(model=MODEL, max_output_tokens=8, temperature=0, store=False, input=[
        {"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "What is my name?"}])
    assert cont.usage.input_tokens == whole.usage.input_tokens
    assert cont.output_text == whole.output_text
    c2.responses.delete(first.id)
    with pytest.raises(NotFoundError):
        c2.responses.retrieve(first.id)
    with pytest.raises(NotFoundError):
        c2.responses.retrieve(whole.id)  # store=False kept nothing
