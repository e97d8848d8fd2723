"""`ember serve` through the official openai client (sync and async) and raw HTTP, against one real server.

    .venv/bin/python -m pytest tests/server -q
"""

import asyncio
import json

import httpx
import openai
import pytest

MODEL = "smollm2-135m-instruct"
EMBED = "minilm-l6-v2"
MSG = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def aclient(server):
    return openai.AsyncOpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)


def test_models_list_and_get(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == [MODEL, EMBED]
    assert client.models.retrieve(MODEL).id == MODEL
    assert client.models.retrieve(f"{MODEL}:1").id == MODEL  # any reference to the served version
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_chat_and_completion(client):
    chat = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=6, temperature=0)
    assert chat.object == "chat.completion" and chat.model == MODEL
    c = chat.choices[0]
    assert c.message.role == "assistant" and c.message.content and c.finish_reason in ("stop", "length")
    assert chat.usage.completion_tokens <= 6 and chat.usage.total_tokens == chat.usage.prompt_tokens + \
        chat.usage.completion_tokens
    comp = client.completions.create(model=f"{MODEL}@latest", prompt="The capital of France is", max_tokens=5,
                                     temperature=0, user="tester")
    assert comp.choices[0].finish_reason == "length" and comp.usage.completion_tokens == 5
    assert comp.model == MODEL


def test_next_chat_turn_reports_cached_prompt_tokens(client, server):
    """The second turn of a conversation reuses the first turn's cache (OpenAI's usage field says how much)."""
    cached_before = server.metric("ember:prompt_tokens_cached_total")
    msgs = [{"role": "system", "content": "You are a helpful assistant. Answer briefly and precisely."},
            {"role": "user", "content": "Give me one word for happy."}]
    first = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, temperature=0)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    msgs += [{"role": "assistant", "content": first.choices[0].message.content},
             {"role": "user", "content": "And one for sad?"}]
    second = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, temperature=0)
    assert first.usage.prompt_tokens <= second.usage.prompt_tokens_details.cached_tokens < \
        second.usage.prompt_tokens
    assert server.metric("ember:prompt_tokens_cached_total") == \
        cached_before + second.usage.prompt_tokens_details.cached_tokens


def test_stop_string_and_token_prompt(client):
    comp = client.completions.create(model=MODEL, prompt=[504, 3575, 282], max_tokens=8, temperature=0)
    text = comp.choices[0].text
    assert comp.usage.prompt_tokens == 3 and text
    stop = text.strip()[:2]
    if stop:
        stopped = client.completions.create(model=MODEL, prompt=[504, 3575, 282], max_tokens=8, temperature=0,
                                            stop=[stop])
        assert stop not in stopped.choices[0].text and stopped.choices[0].finish_reason == "stop"


def test_n_logprobs_seed_beam(client):
    many = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=4, n=3, seed=1)
    assert sorted(c.index for c in many.choices) == [0, 1, 2]
    lp = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=4, logprobs=True, top_logprobs=2)
    content = lp.choices[0].logprobs.content
    assert len(content) == lp.usage.completion_tokens and all(len(t.top_logprobs) == 2 for t in content)
    assert all(t.logprob <= 0 for t in content)
    clp = client.completions.create(model=MODEL, prompt="Hello", max_tokens=3, logprobs=2, temperature=0)
    assert len(clp.choices[0].logprobs.tokens) == 3 and len(clp.choices[0].logprobs.top_logprobs[0]) >= 2
    a, b = (client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=1.0,
                                      seed=1234).choices[0].text for _ in range(2))
    assert a == b
    beam = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=5, n=2,
                                     extra_body={"use_beam_search": True, "best_of": 3})
    assert len(beam.choices) == 2 and beam.choices[0].text != beam.choices[1].text


def test_stream_with_usage_sync(client):
    stream = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=6, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 6
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])


def test_stream_async_completions(aclient):
    async def go():
        stream = await aclient.completions.create(model=MODEL, prompt="1, 2, 3,", max_tokens=6, temperature=0,
                                                  stream=True, stream_options={"include_usage": True})
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].text
            if chunk.usage:
                usage = chunk.usage
        full = await aclient.completions.create(model=MODEL, prompt="1, 2, 3,", max_tokens=6, temperature=0)
        return text, usage, full

    text, usage, full = asyncio.run(go())
    assert usage.completion_tokens == 6 and text == full.choices[0].text


def test_embeddings(client):
    emb = client.embeddings.create(model=EMBED, input=["hello world", "a dog"])
    assert [d.index for d in emb.data] == [0, 1] and len(emb.data[0].embedding) == 384
    assert abs(sum(x * x for x in emb.data[0].embedding) - 1) < 1e-3  # normalized, like sentence-transformers
    assert emb.usage.prompt_tokens > 0
    b64 = client.embeddings.create(model=EMBED, input="hello world")  # the client asks for base64 itself
    assert b64.data[0].embedding == pytest.approx(emb.data[0].embedding, abs=1e-5)


def test_tokenize_detokenize(server):
    r = httpx.post(server.url + "/tokenize", json={"model": MODEL, "prompt": "hello world"}).json()
    assert r["count"] == len(r["tokens"]) > 0
    back = httpx.post(server.url + "/detokenize", json={"model": MODEL, "tokens": r["tokens"]}).json()
    assert back["prompt"] == "hello world"


def test_sse_byte_format(server):
    body = {"model": MODEL, "messages": MSG, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", server.v1 + "/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e[len("data: "):]) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(p["object"] == "chat.completion.chunk" and p["id"] == payloads[0]["id"] for p in payloads)
    assert payloads[-1]["choices"][0]["finish_reason"] in ("stop", "length")


BAD = [
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "temperature": -0.5}, 400, "temperature"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": 7}, 400, "prompt"),
    ("/v1/completions", {"model": MODEL}, 400, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 100000}, 400, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "n": 0}, 400, "n"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "logit_bias": {"abc": 1}}, 400, "logit_bias"),
    ("/v1/completions", {"model": MODEL, "prompt": [999999999]}, 400, "prompt"),
    ("/v1/completions", {"model": "nope", "prompt": "x"}, 404, "model"),
    ("/v1/completions", {"model": EMBED, "prompt": "x"}, 400, "model"),
    ("/v1/chat/completions", {"model": MODEL, "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": MSG, "stream": "yes"}, 400, "stream"),
    ("/v1/chat/completions", {"model": MODEL, "messages": MSG, "top_logprobs": 50, "logprobs": True}, 400,
     "top_logprobs"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x " * 3000}]}, 400,
     None),
    ("/v1/embeddings", {"model": EMBED, "input": []}, 400, "input"),
    ("/v1/embeddings", {"model": MODEL, "input": "x"}, 400, "model"),
    ("/v1/embeddings", {"model": "nope", "input": "x"}, 404, "model"),
    ("/detokenize", {"model": MODEL, "tokens": [-1]}, 400, "tokens"),
]


@pytest.mark.parametrize("path,body,status,param", BAD, ids=[f"{p}-{i}" for i, (p, *_) in enumerate(BAD)])
def test_bad_input_gets_openai_error(server, path, body, status, param):
    r = httpx.post(server.url + path, json=body, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param:
        assert err["param"] == param
    assert "Traceback" not in r.text


def test_raw_http_errors(server):
    r = httpx.post(server.v1 + "/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.get(server.url + "/no/such/route")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.post(server.v1 + "/completions", content=b'{"prompt": "' + b"a" * (5 * 1024 * 1024) + b'"}',
                   headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and "error" in r.json()
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert httpx.get(server.url + "/ready").status_code == 200


def test_many_streams_with_disconnects(server):
    """64 concurrent streams, 16 of which hang up after their first token: the other 48 complete, every slot
    is given back, and nothing is logged as a server error."""
    aborted_before = server.metric("ember:request_aborted_total")
    body = {"model": MODEL, "prompt": "Write a long story about a cat.", "stream": True, "temperature": 0.7}

    async def one(http, i):
        quitter = i % 4 == 0
        req = {**body, "max_tokens": 300 if quitter else 12, "ignore_eos": quitter, "seed": i}
        async with http.stream("POST", server.v1 + "/completions", json=req) as r:
            assert r.status_code == 200
            events = 0
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    return "done"
                events += 1
                if quitter and events >= 1:
                    return "quit"  # leaving the block closes the connection mid-stream
        return "truncated"

    async def main():
        async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=100)) as http:
            return await asyncio.gather(*(one(http, i) for i in range(64)))

    results = asyncio.run(main())
    assert results.count("done") == 48 and results.count("quit") == 16
    for _ in range(600):  # the aborts reach the engine asynchronously; wait until they are all in
        if (server.metric("ember:num_requests_running") == 0 and server.metric("ember:num_requests_waiting") == 0
                and server.metric("ember:request_aborted_total") >= aborted_before + 16):
            break
        asyncio.run(asyncio.sleep(0.1))
    assert server.metric("ember:num_requests_running") == 0
    assert server.metric("ember:num_requests_waiting") == 0
    assert server.metric("ember:request_aborted_total") >= aborted_before + 16
    assert server.metric("ember:cache_usage_perc", model_name=MODEL) == 0
    log = server.log()
    assert '"status": 5' not in log and "Traceback" not in log


def test_metrics_and_request_log(server):
    text = httpx.get(server.url + "/metrics").text
    for name in ("ember:time_to_first_token_seconds", "ember:time_per_output_token_seconds",
                 "ember:e2e_request_latency_seconds", "ember:request_queue_time_seconds",
                 "ember:num_requests_running", "ember:num_requests_waiting", "ember:prompt_tokens_total",
                 "ember:generation_tokens_total", "ember:request_success_total", "ember:cache_usage_perc",
                 "ember:request_aborted_total"):
        assert name in text, name
    assert server.metric("ember:generation_tokens_total", model_name=MODEL) > 0
    lines = [json.loads(line.split("ember.requests: ", 1)[1]) for line in server.log().splitlines()
             if "ember.requests: " in line]
    gen = [r for r in lines if r["path"] == "/v1/chat/completions" and r["status"] == 200]
    assert gen and {"id", "model", "prompt_tokens", "completion_tokens", "ttft_s", "e2e_s"} <= set(gen[0])
    assert not any("prompt" in r or "completion" in r for r in lines)  # no text without --log-content
