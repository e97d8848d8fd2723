"""Bounded admission in front of each served model: at most `capacity` sequences generate at once, at most
`max_queue` requests wait for room, and the next one is refused at once with 429 + Retry-After.

    ember serve --max-slots 32 --max-queue 256

Waiting happens here (on the event loop, costing nothing) rather than inside the engine, so the queue is
bounded, its length is exact for the metrics, and the time spent in it is the request's queue time. A
request for n choices takes n units (the engine runs n sequences for it). Admission is first come, first
served: a large request at the head is not overtaken by small ones behind it.
"""

import asyncio
from collections import deque
from contextlib import asynccontextmanager

from ember.errors import InvalidRequest, Overloaded


class Admission:
    def __init__(self, capacity: int, max_queue: int):
        self.capacity = max(1, capacity)
        self.max_queue = max(0, max_queue)
        self.used = 0
        self.running = 0
        self._waiters: deque[tuple[int, asyncio.Future]] = deque()
        self.closed = False

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _wake(self) -> None:
        while self._waiters:
            units, fut = self._waiters[0]
            if fut.done():  # cancelled while waiting
                self._waiters.popleft()
                continue
            if self.used + units > self.capacity:
                return
            self._waiters.popleft()
            self.used += units
            fut.set_result(None)

    async def acquire(self, units: int = 1) -> None:
        if self.closed:
            raise Overloaded("the server is shutting down", retry_after=5)
        if units > self.capacity:
            raise InvalidRequest(f"this request needs {units} sequences at once; the server runs at most "
                                 f"{self.capacity}", param="n")
        if not self._waiters and self.used + units <= self.capacity:
            self.used += units
            self.running += 1
            return
        if len(self._waiters) >= self.max_queue:
            raise Overloaded(f"the server is busy ({self.running} running, {len(self._waiters)} waiting); "
                             "retry later", retry_after=self.retry_after())
        fut = asyncio.get_running_loop().create_future()
        entry = (units, fut)
        self._waiters.append(entry)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():  # admitted just as we were cancelled: give it back
                self.used -= units
                self._wake()
            else:
                try:
                    self._waiters.remove(entry)
                except ValueError:
                    pass
            raise
        self.running += 1

    def release(self, units: int = 1) -> None:
        self.used -= units
        self.running -= 1
        self._wake()

    def retry_after(self) -> int:
        # A rough guess: one "generation" of the running batch per second of waiting queue depth.
        return max(1, min(30, 1 + len(self._waiters) // self.capacity))

    @asynccontextmanager
    async def slot(self, units: int = 1):
        await self.acquire(units)
        try:
            yield
        finally:
            self.release(units)
