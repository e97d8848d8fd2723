"""`ember serve --speculative ngram`: the official openai client gets the same greedy text as without
speculation, streamed or not, and /metrics reports the drafts (vLLM's spec_decode counters).

    .venv/bin/python -m pytest tests/server/test_speculative_serving.py -q
"""

import re

import httpx
import pytest

PROMPT = "one two three four one two three four one two three four one two"


@pytest.fixture(scope="module")
def spec_server(start_server, tmp_path_factory, tiny_chat_dir):
    from ember.config import Settings
    from ember.store import registry

    home = tmp_path_factory.mktemp("spec-home")
    registry.register_folder(tiny_chat_dir, "tiny", settings=Settings(home=home))
    return start_server(home, "--model", "tiny", "--max-slots", 4, "--max-seq-len", 256, "--no-workers",
                        "--speculative", "ngram", "--num-speculative-tokens", "3")


def test_speculative_server_matches_plain_greedy_and_reports_drafts(spec_server, tiny_chat_dir):
    from openai import OpenAI

    from ember.engine.engine import Engine
    from ember.engine.sampling import SamplingParams

    plain = Engine.load(tiny_chat_dir, max_slots=1, max_seq_len=256)
    want = plain.generate([PROMPT], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))[0].text
    plain.close()
    client = OpenAI(base_url=spec_server.url + "/v1", api_key="unused")
    body = {"ignore_eos": True}
    got = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=24, temperature=0, extra_body=body)
    assert got.choices[0].text == want and got.usage.completion_tokens == 24
    chunks = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=24, temperature=0, stream=True,
                                       extra_body=body)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want
    metrics = httpx.get(spec_server.url + "/metrics").text
    drafted = re.search(r'^ember:spec_decode_num_draft_tokens_total\{model_name="tiny"\} (\S+)', metrics, re.M)
    accepted = re.search(r'^ember:spec_decode_num_accepted_tokens_total\{model_name="tiny"\} (\S+)', metrics, re.M)
    assert drafted and float(drafted.group(1)) > 0
    assert accepted and 0 <= float(accepted.group(1)) <= float(drafted.group(1))
