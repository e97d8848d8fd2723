"""`ember serve --backend vllm` end to end on the CPU: the real server (routes, keys, limits, error shapes,
metrics, registry) with vLLM's engine played by the fake package in tests/fakes/vllm, driven by the official
openai client. Without vllm, or without a GPU, the command refuses with one line and a non-zero exit."""

import os
from pathlib import Path

import httpx
import openai
import pytest

FAKES = str(Path(__file__).parents[1] / "fakes")


def _env(**extra):
    return {"PYTHONPATH": os.pathsep.join([FAKES, os.environ.get("PYTHONPATH", "")]), **extra}


@pytest.fixture(scope="module")
def home(tiny_chat_dir, tmp_path_factory):
    from ember.config import Settings
    from ember.store import keys, registry

    home = tmp_path_factory.mktemp("vllm-home")
    settings = Settings(home=home)
    registry.register_folder(tiny_chat_dir, "tiny", settings=settings)
    _, secret = keys.create("tests", "inference,admin", settings=settings, rpm=1000)
    _, limited = keys.create("limited", settings=settings, rpm=2)
    from ember.store import db

    db.dispose_all()
    return home, secret, limited


@pytest.fixture(scope="module")
def server(start_server, home):
    srv = start_server(home[0], "--backend", "vllm", "--model", "tiny", "--no-workers", env=_env())
    srv.headers = {"Authorization": f"Bearer {home[1]}"}  # for /metrics
    return srv


@pytest.fixture(scope="module")
def client(server, home):
    return openai.OpenAI(base_url=server.v1, api_key=home[1], max_retries=0)


@pytest.fixture(scope="module")
def walk(tiny_chat_dir):
    """The fake engine's text after n tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_chat_dir)
    ids = tok(" the fake vllm engine says hello to you")["input_ids"]
    return lambda n: "".join(tok.decode([t]) for t in ids[:n])


def test_chat_and_streamed_completion_through_vllm(client, server, walk):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert r.choices[0].message.content == walk(4)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 4
    chunks = list(client.completions.create(model="tiny:1", prompt="Hello", max_tokens=6, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == walk(6)
    assert chunks[-1].usage.completion_tokens == 6
    assert server.metric("ember:request_success_total", model_name="tiny") >= 2


def test_errors_have_the_same_shapes(client, server, home):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="Hello", max_tokens=5000)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="Hello", max_tokens=4, extra_body={"use_beam_search": True})
    assert e.value.body["param"] == "use_beam_search"
    r = httpx.post(server.v1 + "/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2})
    assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    limited = openai.OpenAI(base_url=server.v1, api_key=home[2], max_retries=0)
    limited.completions.create(model="tiny", prompt="a", max_tokens=1)
    limited.completions.create(model="tiny", prompt="a", max_tokens=1)
    with pytest.raises(openai.RateLimitError):
        limited.completions.create(model="tiny", prompt="a", max_tokens=1)


def test_refuses_without_vllm_or_gpu(run_cli):
    r = run_cli("serve", "--backend", "vllm", timeout=120)
    assert r.returncode == 5 and "vllm" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("serve", "--backend", "vllm", env=_env(FAKE_VLLM_GPU="0"), timeout=120)
    assert r.returncode == 5 and "CUDA GPU" in r.stderr and len(r.stderr.strip().splitlines()) == 1
