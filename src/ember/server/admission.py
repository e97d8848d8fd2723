"""Bounded, fair admission in front of each served model: at most `capacity` sequences generate at once, at
most `max_queue` requests wait for room, and the next one is refused at once with 429 + Retry-After.

    ember serve --max-slots 32 --max-queue 256 --max-queue-per-key 64 --queue-timeout 120

Waiting happens here (on the event loop, costing nothing) rather than inside the engine, so the queue is
bounded, its length is exact for the metrics, and the time spent in it is the request's queue time. A
request takes one unit per sequence it runs: n choices take n, a beam search takes one per beam.

Fair across API keys: each key (tenant) has its own FIFO queue, and freed room goes to the keys in
round-robin order, so a key that floods the server only delays its own requests. A key may hold at most
`max_queue_per_key` waiting requests (requests without a key, when keys are off, share the whole queue).
Within the head key, a large request is not overtaken by small ones behind it.
"""

import asyncio
from collections import deque
from contextlib import asynccontextmanager

from ember.errors import InvalidRequest, Overloaded


class Admission:
    def __init__(self, capacity: int, max_queue: int, max_queue_per_key: int | None = None):
        self.capacity = max(1, capacity)
        self.max_queue = max(0, max_queue)
        self.max_queue_per_key = self.max_queue if max_queue_per_key is None else max(1, max_queue_per_key)
        self.used = 0
        self.running = 0
        self._queues: dict[object, deque[tuple[int, asyncio.Future]]] = {}
        self._order: deque = deque()  # tenants with waiters, in round-robin order
        self._waiting = 0
        self.closed = False

    @property
    def waiting(self) -> int:
        return self._waiting

    def _wake(self) -> None:
        while self._order:
            tenant = self._order[0]
            q = self._queues[tenant]
            while q and q[0][1].done():  # cancelled while waiting (already uncounted)
                q.popleft()
            if not q:
                self._order.popleft()
                del self._queues[tenant]
                continue
            units, fut = q[0]
            if self.used + units > self.capacity:
                return
            q.popleft()
            self._waiting -= 1
            self.used += units
            fut.set_result(None)
            self._order.rotate(-1)  # the next key gets the next free room

    async def acquire(self, units: int = 1, tenant=None) -> None:
        if self.closed:
            raise Overloaded("the server is shutting down", retry_after=5)
        if units > self.capacity:
            raise InvalidRequest(f"this request needs {units} sequences at once (choices x beams); the server "
                                 f"runs at most {self.capacity}", param="n")
        if not self._waiting and self.used + units <= self.capacity:
            self.used += units
            self.running += 1
            return
        if self._waiting >= self.max_queue:
            raise Overloaded(f"the server is busy ({self.running} running, {self._waiting} waiting); "
                             "retry later", retry_after=self.retry_after())
        q = self._queues.get(tenant)
        if tenant is not None and q is not None and len(q) >= self.max_queue_per_key:
            raise Overloaded(f"this API key already has {len(q)} requests waiting (at most "
                             f"{self.max_queue_per_key} per key); retry later", retry_after=self.retry_after())
        fut = asyncio.get_running_loop().create_future()
        entry = (units, fut)
        if q is None:
            q = self._queues[tenant] = deque()
            self._order.append(tenant)
        q.append(entry)
        self._waiting += 1
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():  # admitted just as we were cancelled: give it back
                self.used -= units
            else:
                try:
                    q.remove(entry)
                    self._waiting -= 1
                except ValueError:
                    pass
            self._wake()
            raise
        self.running += 1

    def release(self, units: int = 1) -> None:
        self.used -= units
        self.running -= 1
        self._wake()

    def retry_after(self) -> int:
        # A rough guess: one "generation" of the running batch per second of waiting queue depth.
        return max(1, min(30, 1 + self._waiting // self.capacity))

    @asynccontextmanager
    async def slot(self, units: int = 1, tenant=None):
        await self.acquire(units, tenant)
        try:
            yield
        finally:
            self.release(units)
