"""`ember serve` on PostgreSQL: keys, rpm limits, usage and stored responses live in the shared database.

    .venv/bin/python -m pytest tests/server/test_server_postgres.py -q     # skips without initdb/pg_ctl

One server with the tiny chat model on a fresh PostgreSQL database (tests/pg_server.py), driven with the
official openai client; what it writes is read back through the store, as another replica would.
"""

import time

import openai
import pytest

from ember.config import Settings
from ember.store import keys, registry, usage


@pytest.fixture(scope="module")
def pg_served(pg_server, tmp_path_factory, tiny_chat_dir, start_server):
    url = pg_server.new_database()
    home = tmp_path_factory.mktemp("pg-home")
    st = Settings(home=home, database_url=url)
    registry.register_folder(tiny_chat_dir, "tiny", settings=st)
    info, secret = keys.create("app", "inference", st, rpm=3)
    srv = start_server(home, "--model", "tiny", env={"EMBER_DATABASE_URL": url})
    return srv, st, info, secret


def test_a_key_rpm_usage_and_stored_responses_on_postgresql(pg_served):
    srv, st, info, secret = pg_served
    if time.time() % 60 > 45:  # the three requests in one minute window
        time.sleep(61 - time.time() % 60)
    client = openai.OpenAI(base_url=srv.v1, api_key=secret, max_retries=0)
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert chat.choices[0].message.content is not None
    first = client.responses.create(model="tiny", input="Hi", max_output_tokens=4, store=True)
    follow = client.responses.create(model="tiny", input="And?", max_output_tokens=4, previous_response_id=first.id)
    assert follow.previous_response_id == first.id and follow.output  # found in PostgreSQL
    with pytest.raises(openai.RateLimitError):  # rpm=3 (the Responses API counts too), counted in PostgreSQL
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=srv.v1, api_key="ember-nope", max_retries=0).models.list()
    deadline = time.monotonic() + 30  # usage tokens are written just after each response
    while True:
        rows = usage.report(st, key_id=info.id)
        if sum(r["completion_tokens"] for r in rows) > 0 and sum(r["requests"] for r in rows) == 3:
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.3)
    assert keys.get(info.id, st).last_used_at is not None
