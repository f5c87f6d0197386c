"""A bound on the request bodies one worker holds at once, so a burst of large charts queues instead of
exhausting memory, and clients that send slowly hold nothing they have not sent.

Each hook request holds its body, plus about as much again while it is evaluated (docs/performance-budget.md). Without a
bound, forty concurrent 60 MB charts would ask one worker for ~5 GB. A request holds a `Share` of the budget
that grows by each chunk of its body *as the chunk arrives* (`Share.take`) and is given back whole when its
response is ready. Counting what arrived, not the declared Content-Length, is what keeps trickling clients
harmless: four clients declaring 128 MiB and sending a byte a second hold four bytes, not the whole budget.

A chunk that does not fit waits its turn in arrival order; while it waits, uvicorn stops reading that socket, so
the client is slowed by TCP back-pressure, never refused. The oldest request holding a share never waits: it
may take the worker past the budget by at most one body. That is what guarantees progress: partly received
bodies that fill the budget and all wait for more room would otherwise wait for each other for ever.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Share:
    """What one request holds of the budget; see `InflightBudget.share`."""

    def __init__(self, budget: InflightBudget) -> None:
        self._budget = budget
        self.held = 0
        self.waited_ms = 0.0

    async def take(self, size: int) -> float:
        """Add `size` bytes to this share, waiting for room if need be; return the seconds waited."""
        return await self._budget._take(self, size)


class InflightBudget:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._holders: dict[Share, None] = {}  # insertion order = arrival order
        self._waiting: deque[tuple[Share, int, asyncio.Future[None]]] = deque()

    @asynccontextmanager
    async def share(self) -> AsyncIterator[Share]:
        """A share for one request: empty at first, grown by `take`, given back whole when the block ends."""
        share = Share(self)
        self._holders[share] = None
        try:
            yield share
        finally:
            del self._holders[share]
            self.used -= share.held
            share.held = 0
            self._wake()

    @asynccontextmanager
    async def reserve(self, size: int) -> AsyncIterator[float]:
        """Hold `size` bytes for the block, taken at once; yields how long the request waited, in ms."""
        async with self.share() as share:
            await share.take(size)
            yield share.waited_ms

    def _oldest(self, share: Share) -> bool:
        return next(iter(self._holders), None) is share

    def _fits(self, share: Share, size: int) -> bool:
        return self.used + size <= self.capacity or self._oldest(share)

    def _grant(self, share: Share, size: int) -> None:
        self.used += size
        share.held += size

    async def _take(self, share: Share, size: int) -> float:
        if (not self._waiting or self._oldest(share)) and self._fits(share, size):
            self._grant(share, size)
            return 0.0
        start = time.perf_counter()
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (share, size, turn)
        self._waiting.append(entry)
        try:
            await turn
        except BaseException:
            # Cancelled (client gone): leave the queue; a grant made meanwhile is given back with the share.
            if not (turn.done() and not turn.cancelled()):
                if entry in self._waiting:
                    self._waiting.remove(entry)
                self._wake()
            raise
        finally:
            waited = time.perf_counter() - start
            share.waited_ms += waited * 1000
        return waited

    def _wake(self) -> None:
        # Strictly in arrival order: a large chart is not starved by small requests that would fit around it.
        # A waiter cancelled a moment ago has a cancelled future but may not have left the queue yet.
        while self._waiting and (self._waiting[0][2].done() or self._fits(*self._waiting[0][:2])):
            share, size, turn = self._waiting.popleft()
            if not turn.done():
                self._grant(share, size)
                turn.set_result(None)
        # The oldest request never waits, wherever it is in the queue (see the module docstring).
        oldest = next(iter(self._holders), None)
        for entry in [e for e in self._waiting if e[0] is oldest and not e[2].done()]:
            self._waiting.remove(entry)
            self._grant(entry[0], entry[1])
            entry[2].set_result(None)
