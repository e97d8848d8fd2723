"""Backpressure and graceful shutdown of `ember serve`: a bounded admission queue (429 + Retry-After beyond it,
every request answered under it) and SIGTERM (in-flight streams finish, exit 0).

    .venv/bin/python -m pytest tests/server/test_server_limits.py -q
"""

import signal
import threading
import time

import httpx
import pytest

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def small(start_server, catalog_home, smollm2_dir):
    # One generation slot and room for two waiting requests.
    return start_server(catalog_home, "--model", MODEL, "--max-slots", 1, "--max-queue", 2)


def _wait_for(cond, what: str, tries: int = 1200):
    for _ in range(tries):
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def test_queue_bound(small):
    long_req = {"model": MODEL, "prompt": "Tell me a story.", "max_tokens": 1500, "ignore_eos": True,
                "stream": True}
    short = {"model": MODEL, "prompt": "Hi", "max_tokens": 4}
    answers: list[int] = []
    with httpx.Client(timeout=300) as http, http.stream("POST", small.v1 + "/completions", json=long_req) as hog:
        assert hog.status_code == 200
        lines = hog.iter_lines()
        next(line for line in lines if line.startswith("data: "))  # it holds the only slot now

        def ask():
            answers.append(httpx.post(small.v1 + "/completions", json=short, timeout=300).status_code)

        waiters = [threading.Thread(target=ask) for _ in range(2)]
        for t in waiters:
            t.start()
        _wait_for(lambda: small.metric("ember:num_requests_waiting") == 2, "two requests queued")
        over = httpx.post(small.v1 + "/completions", json=short, timeout=60)
        assert over.status_code == 429
        assert int(over.headers["Retry-After"]) >= 1
        assert over.json()["error"]["type"] == "rate_limit_error"
    # leaving the block hung up on the hog: its slot goes to the queued requests, which are answered
    for t in waiters:
        t.join(300)
    assert answers == [200, 200]
    assert small.metric("ember:request_rejected_total") == 1
    _wait_for(lambda: small.metric("ember:num_requests_running") == 0, "running back to 0")


def test_hung_up_requests_leave_the_queue_and_free_their_slot(small):
    """A non-streamed request whose client gives up frees its slot at once, and one waiting in the queue
    leaves it: neither keeps generating an answer nobody will read."""
    long_req = {"model": MODEL, "prompt": "Tell me a story.", "max_tokens": 1800, "ignore_eos": True}
    gave_up = httpx.Timeout(60, read=2)
    aborted = small.metric("ember:request_aborted_total")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(small.v1 + "/completions", json=long_req, timeout=gave_up)
    _wait_for(lambda: small.metric("ember:num_requests_running") == 0, "the hung-up request's slot freed", 200)
    assert small.metric("ember:request_aborted_total") == aborted + 1
    with httpx.Client(timeout=300) as http, \
            http.stream("POST", small.v1 + "/completions", json={**long_req, "stream": True}) as hog:
        lines = hog.iter_lines()  # kept: a dropped iterator would close the stream
        next(line for line in lines if line.startswith("data: "))  # it holds the only slot
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(small.v1 + "/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 4},
                       timeout=gave_up)
        _wait_for(lambda: small.metric("ember:num_requests_waiting") == 0, "the hung-up request left the queue",
                  200)
        assert small.metric("ember:num_requests_running") == 1  # the stream goes on
        assert small.metric("ember:request_aborted_total") == aborted + 2
    _wait_for(lambda: small.metric("ember:num_requests_running") == 0, "running back to 0")
    assert "  File " not in small.log() and '"status": 500' not in small.log()


def test_sigterm_finishes_streams_and_exits_0(small):
    body = {"model": MODEL, "prompt": "Count to ten:", "max_tokens": 24, "ignore_eos": True, "stream": True,
            "temperature": 0}
    with httpx.stream("POST", small.v1 + "/completions", json=body, timeout=120) as r:
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        small.proc.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    assert small.proc.wait(120) == 0
    with pytest.raises(httpx.HTTPError):
        httpx.get(small.url + "/health", timeout=5)
    assert "Traceback" not in small.log()
