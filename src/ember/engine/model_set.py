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


def alias_counter(settings=None) -> tuple[int, int]:
    """(number of alias events, newest id): it changes whenever any alias of any model moves, from any process
    sharing the database. Plain SQL on any SQLAlchemy URL (SQLite, PostgreSQL); the count also catches an
    event whose id was taken before a newer one but committed after it (PostgreSQL sequences)."""
    with db.session(settings) as s:
        n, newest = s.execute(select(func.count(db.AliasEvent.id), func.max(db.AliasEvent.id))).one()
        return int(n or 0), int(newest or 0)


def follows_alias(ref: str) -> bool:
    """A reference that can move: `name@alias`, or a plain `name` (which means `name@latest`)."""
    from ember.store.registry import parse_ref

    try:
        _, number, _ = parse_ref(ref)
    except Exception:  # noqa: BLE001 - a folder path or anything else that is not a reference
        return False
    return number is None


def engine_idle(engine) -> bool:
    """No request is queued or running on the engine (its in-flight streams have all finished), and no server
    request still holds it (server/generation.py pins the engine from before admission until it ends)."""
    return (not getattr(engine, "pins", 0) and not engine._requests and not engine.sched.has_work()
            and engine._inbox.empty())


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
    for name in ("cache", "model", "loaded", "adapters"):
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


class AdapterCache:
    """LoRA adapters resident on one engine's base, least recently used first out (`--max-adapters`).

    `acquire(ref)` returns the adapter's slot for a request (loading it on first use: a cache miss) and
    `release(slot)` is called when that request ends; an adapter still used by a running request is never
    evicted, so a step never sees its rows' adapter change. Counters feed the server's metrics."""

    def __init__(self, decoder, max_adapters: int, settings=None):
        import threading
        from collections import OrderedDict

        from ember.models.lora import LoraSlots

        if decoder.lora is None:
            decoder.lora = LoraSlots()
        self.decoder, self.max_adapters, self.settings = decoder, max_adapters, settings
        self.by_ref: OrderedDict[str, int] = OrderedDict()
        self.users: dict[int, int] = {}
        self.lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def folder(self, ref: str):
        from pathlib import Path

        from ember.errors import InvalidRequest
        from ember.store import registry

        p = Path(ref).expanduser()
        if p.is_dir():
            return p
        info = registry.resolve(ref, self.settings)
        if info.kind != "adapter":
            raise InvalidRequest(f"{info.ref} is a {info.kind}, not a LoRA adapter")
        return registry.materialize(info, self.settings)

    def acquire(self, ref: str) -> int:
        from ember.errors import Overloaded
        from ember.models.lora import load_adapter

        with self.lock:
            slot = self.by_ref.get(ref)
            if slot is not None:
                self.by_ref.move_to_end(ref)
                self.hits += 1
                self.users[slot] = self.users.get(slot, 0) + 1
                return slot
            self.misses += 1
            reuse = None
            if len(self.by_ref) >= self.max_adapters:
                victim = next((r for r, s in self.by_ref.items() if not self.users.get(s)), None)
                if victim is None:
                    raise Overloaded(f"all {self.max_adapters} adapter slots are in use (--max-adapters)",
                                     retry_after=1)
                reuse = self.by_ref.pop(victim)
                self.decoder.lora.slots[reuse] = None
                self.evictions += 1
                log.info("adapter %s evicted (least recently used)", victim)
            ad = load_adapter(self.folder(ref), self.decoder, ref)
            slot = self.decoder.lora.put(ad, reuse)
            self.by_ref[ref] = slot
            self.users[slot] = 1
            return slot

    def warm(self, ref: str) -> None:
        """Loads the adapter if it is not resident (blocking: the server calls it from a worker thread, so a
        cache miss reads files off the event loop); add_request then finds it."""
        self.release(self.acquire(ref))

    def release(self, slot: int) -> None:
        with self.lock:
            self.users[slot] = max(self.users.get(slot, 0) - 1, 0)

    def stats(self) -> dict:
        with self.lock:
            return {"loaded": list(self.by_ref), "hits": self.hits, "misses": self.misses,
                    "evictions": self.evictions,
                    "bytes": sum(a.nbytes for a in self.decoder.lora.slots if a is not None)}
