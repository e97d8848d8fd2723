"""The one thread per process that runs Ember's heavy torch work: decode steps, model loading, embeddings.

    engine = Engine.load("smollm2-135m-instruct")   # loads and steps through compute.run(...)

Why: torch's OpenMP runtime (libgomp) keeps a team of worker threads for every thread that ever ran a
parallel region, and once more OpenMP threads exist than cores, every team stops spinning between
regions and sleeps in the kernel instead. A decode step runs ~600 small parallel regions, so a second
team, even an idle one left by a loader thread, made SmolLM2's 32-stream decode 25-30% slower (measured:
640 tok/s when every torch call comes from one thread, 480 when the model was loaded on another).
Routing all heavy work through one thread keeps one team. Work from different engines, the encoder and
beam search interleaves here in submission order; each task is short (one step, one batch).
Rule: a task must never wait for a lock that a thread blocked in `run` may hold (take locks outside, then
`run` inside them), and never call `Engine.abort(wait=True)` style waits on other threads.
"""

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import torch

_local = threading.local()


def _mark() -> None:
    _local.compute = True


# The thread starts on the first submit; the initializer marks it before it runs any task.
EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ember-compute", initializer=_mark)


def on_compute_thread() -> bool:
    return getattr(_local, "compute", False)


class Closed(RuntimeError):
    """The interpreter is exiting: the compute thread takes no new work."""


def submit(fn, *args, **kwargs) -> Future:
    """Queues fn on the compute thread; asyncio callers await `asyncio.wrap_future(submit(...))`."""
    try:
        return EXECUTOR.submit(fn, *args, **kwargs)
    except RuntimeError as e:  # "cannot schedule new futures after (interpreter) shutdown"
        raise Closed(str(e)) from None


def run(fn, *args, **kwargs):
    """Runs fn on the compute thread and returns its result (or raises its exception). Called from the
    compute thread itself it runs inline, so nested calls cannot deadlock."""
    if on_compute_thread():
        return fn(*args, **kwargs)
    return submit(fn, *args, **kwargs).result()


def set_threads(n: int) -> None:
    """OpenMP threads for the compute thread's team (torch's setting is read per thread on first use)."""
    run(torch.set_num_threads, n)
