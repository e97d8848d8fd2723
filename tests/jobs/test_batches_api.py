"""Batches over HTTP with the official openai client: a 200-line chat batch through /v1/batches gives, line
for line (matched by custom_id), exactly what the same requests give synchronously; bad batch files are
refused at upload with their line numbers. A tiny random Llama keeps 200 greedy requests (1-4 tokens) cheap.
"""

import asyncio
import json

import httpx
import openai
import pytest
from job_helpers import wait_for

pytestmark = pytest.mark.timeout(900)
N = 200


@pytest.fixture(scope="module")
def served(start_server, tmp_path_factory, tiny_chat_dir):
    from ember.config import Settings
    from ember.store import registry

    home = tmp_path_factory.mktemp("batch-home")
    registry.register_folder(tiny_chat_dir, "tiny", settings=Settings(home=home))
    return start_server(home, "--model", "tiny", "--max-slots", 16, env={"EMBER_BATCH_CONCURRENCY": "8"})


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.v1, api_key="unused", max_retries=0)


def lines(n):
    for i in range(n):
        yield {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
               "body": {"model": "tiny", "temperature": 0, "max_tokens": 1 + i % 4,
                        "messages": [{"role": "user", "content": f"Count to {i} and then {i % 7} more."}]}}


def test_batch_outputs_equal_synchronous_greedy_requests(client, served, tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines(N)))
    f = client.files.create(file=path, purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.status in ("validating", "in_progress") and batch.request_counts.total == N

    def done():
        b = client.batches.retrieve(batch.id)
        return b if b.status in ("completed", "failed", "cancelled") else None

    batch = wait_for(done, 600, "the batch to complete")
    assert batch.status == "completed", batch.errors
    assert batch.request_counts.completed == N and batch.request_counts.failed == 0
    results = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    assert len(results) == N and len({r["custom_id"] for r in results}) == N
    by_id = {r["custom_id"]: r["response"]["body"] for r in results}

    async def synchronous():
        async with httpx.AsyncClient(base_url=served.v1, timeout=120) as http:
            limit = asyncio.Semaphore(8)

            async def one(body):
                async with limit:
                    return (await http.post("/chat/completions", json=body)).json()
            return await asyncio.gather(*(one(line["body"]) for line in lines(N)))

    for line, sync in zip(lines(N), asyncio.run(synchronous())):
        got = by_id[line["custom_id"]]
        assert got["choices"][0]["message"] == sync["choices"][0]["message"], line["custom_id"]
        assert got["choices"][0]["finish_reason"] == sync["choices"][0]["finish_reason"]
        assert got["usage"]["completion_tokens"] == sync["usage"]["completion_tokens"]


def test_bad_batch_file_refused_with_line_numbers(client, tmp_path):
    good = list(lines(3))
    bad = [good[0], {"custom_id": "x", "method": "GET", "url": "/v1/chat/completions", "body": {}}, good[2],
           {"custom_id": "y", "url": "/v1/nope", "body": {}}]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in bad) + "{not json\n")
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=path, purpose="batch")
    msg = str(e.value)
    assert "line 2" in msg and "line 4" in msg and "line 5" in msg and "line 3" not in msg
    ok = tmp_path / "ok.jsonl"
    ok.write_text("".join(json.dumps(x) + "\n" for x in good))
    f = client.files.create(file=ok, purpose="batch")
    with pytest.raises(openai.BadRequestError):  # lines are chat, the batch says embeddings
        client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    client.files.delete(f.id)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)
