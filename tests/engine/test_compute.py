"""The compute thread: one thread runs all heavy torch work; results and errors come back to the caller.

    .venv/bin/python -m pytest tests/engine/test_compute.py -q
"""

import subprocess
import sys
import textwrap
import threading

import pytest

from ember.engine import compute
from ember.engine.sampling import SamplingParams


def test_run_returns_results_and_raises_errors_on_the_caller():
    assert compute.run(lambda a, b=0: a + b, 2, b=3) == 5
    with pytest.raises(ZeroDivisionError):
        compute.run(lambda: 1 / 0)


def test_nested_calls_run_inline_instead_of_deadlocking():
    def outer():
        return compute.run(threading.current_thread) is threading.current_thread()

    assert compute.run(outer)


def test_engine_steps_run_on_the_compute_thread(smol_engine):
    seen = set()
    model = smol_engine.model
    forward = model.forward

    def spy(*a):
        seen.add(threading.current_thread().name)
        return forward(*a)

    model.forward = spy
    try:
        smol_engine.generate(["Hello"], SamplingParams(temperature=0, max_tokens=3))
        smol_engine.generate(["Hello"], SamplingParams(num_beams=2, max_tokens=3))
    finally:
        del model.forward
    assert len(seen) == 1 and seen.pop().startswith("ember-compute")


def test_a_cancelled_beam_search_stops(smol_engine):
    steps = []

    def cancelled():
        steps.append(1)
        return len(steps) > 3

    assert smol_engine.beam_search("Tell me a story.", SamplingParams(num_beams=4, max_tokens=200), cancelled) is None
    assert len(steps) == 4  # three beam steps ran, then it stopped instead of running 200


def test_exiting_with_a_request_running_prints_no_traceback(smollm2_dir):
    script = textwrap.dedent(f"""
        import time
        from ember.engine.engine import Engine
        from ember.engine.sampling import SamplingParams
        e = Engine.load({str(smollm2_dir)!r}, max_slots=2, max_seq_len=256)
        e.add_request("Tell me a story", SamplingParams(max_tokens=200, ignore_eos=True), lambda d: None)
        time.sleep(0.5)
        print("exiting")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "exiting"
    assert "Traceback" not in r.stderr and "failed" not in r.stderr
