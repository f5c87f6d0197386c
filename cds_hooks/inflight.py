"""A bound on the request bodies one worker holds at once, so a burst of large charts queues instead of
exhausting memory.

Each hook request holds its body, plus about as much again while it is evaluated (docs/performance-budget.md). Without a
bound, forty concurrent 60 MB charts would ask one worker for ~5 GB. A request reserves its declared body size
(the body limit when it declares none) before its body is read, and gives it back when its response is ready.
Requests that do not fit wait their turn in arrival order; while one waits, uvicorn stops reading its socket,
so its client is slowed by TCP back-pressure, never refused. A request larger than the whole budget still runs,
alone.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class InflightBudget:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _fits(self, size: int) -> bool:
        return self.used == 0 or self.used + size <= self.capacity

    @asynccontextmanager
    async def reserve(self, size: int) -> AsyncIterator[float]:
        """Hold `size` bytes of the budget for the block; yields how long the request waited, in ms."""
        start = time.perf_counter()
        if self._waiting or not self._fits(size):
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.append((size, turn))
            try:
                await turn
            except BaseException:
                # Cancelled (client gone): leave the queue, or hand back a reservation granted meanwhile.
                if turn.done() and not turn.cancelled():
                    self._release(size)
                else:
                    self._waiting.remove((size, turn))
                    self._wake()
                raise
        else:
            self.used += size
        try:
            yield (time.perf_counter() - start) * 1000
        finally:
            self._release(size)

    def _release(self, size: int) -> None:
        self.used -= size
        self._wake()

    def _wake(self) -> None:
        # Strictly in arrival order: a large chart is not starved by small requests that would fit around it.
        while self._waiting and self._fits(self._waiting[0][0]):
            size, turn = self._waiting.popleft()
            self.used += size
            turn.set_result(None)
