"""Which registry versions a process has loaded, how it notices an alias moving, and how it frees a version.

    ember serve --model m@production      # the server's follower (server/follow.py) polls `alias_counter`
    ember models alias m@production 2     # from any process: the server loads m:2, switches, frees m:1

The registry records every alias move (register, alias, promote, rollback, delete) as a row of
`alias_events`, so the largest event id is a change counter that costs one indexed query to read: a server
polls it every second or two and re-resolves its aliases only when it grew. Freeing an engine means more
than dropping it: its step thread is stopped, the references go, the cyclic garbage is collected, and
glibc is asked to give the freed pages back (`malloc_trim`), so the process's RSS really goes down.
"""

import ctypes
import gc
import logging
import os
import time

from sqlalchemy import func, select

from ember.store import db

log = logging.getLogger("ember.engine")


def alias_counter(settings=None) -> int:
    """The newest alias event id: it grows whenever any alias of any model moves, from any process."""
    with db.session(settings) as s:
        return int(s.scalar(select(func.max(db.AliasEvent.id))) or 0)


def follows_alias(ref: str) -> bool:
    """A reference that can move: `name@alias`, or a plain `name` (which means `name@latest`)."""
    from ember.store.registry import parse_ref

    try:
        _, number, _ = parse_ref(ref)
    except Exception:  # noqa: BLE001 - a folder path or anything else that is not a reference
        return False
    return number is None


def engine_idle(engine) -> bool:
    """No request is queued or running on the engine (its in-flight streams have all finished)."""
    return not engine._requests and not engine.sched.has_work() and engine._inbox.empty()


def wait_idle(engine, timeout: float | None = None, poll: float = 0.1) -> bool:
    deadline = None if timeout is None else time.monotonic() + timeout
    while not engine_idle(engine):
        if deadline is not None and time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True


def release_memory() -> None:
    """Collect cycles and hand freed heap pages back to the OS (glibc keeps them mapped unless asked)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def free_engine(engine) -> None:
    """Stops the engine's thread and drops what it holds; the caller must drop its own references too."""
    engine.close()
    for name in ("cache", "model", "loaded"):
        if hasattr(engine, name):
            setattr(engine, name, None)
    release_memory()


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0
