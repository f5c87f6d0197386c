"""Where hook calls that fetch from a FHIR server run, so that slow FHIR servers cannot make other calls wait.

A call that must fetch waits (asynchronously, on the event loop) for a slot for its FHIR server's origin and
then for one of the worker's fetch slots, and runs in this pool's own threads, never in the thread pool that
every other route uses. So a slow server holds at most `per_server` calls' worth of slots, fetches together
hold at most `max_calls` threads, and a call whose prefetch is complete never queues behind any of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TypeVar

from cds_hooks.protocol.prefetch import KEYS_AT_ONCE

T = TypeVar("T")


class FetchPool:
    def __init__(self, max_calls: int, per_server: int) -> None:
        self._calls = ThreadPoolExecutor(max_calls, thread_name_prefix="fhir-call")
        self._keys = ThreadPoolExecutor(max_calls * KEYS_AT_ONCE, thread_name_prefix="fhir-key")
        self._slots = asyncio.Semaphore(max_calls)
        self._per_server = per_server
        # origin -> (its semaphore, calls holding or waiting for it): removed when no call uses it, so origins
        # seen once (open mode allows any loopback port) do not accumulate.
        self._servers: dict[tuple[str, str, int], tuple[asyncio.Semaphore, int]] = {}

    @asynccontextmanager
    async def admit(self, origin: tuple[str, str, int]) -> AsyncIterator[None]:
        """Hold a slot for `origin` and a fetch slot for the block; the caller bounds the wait (asyncio.timeout)."""
        semaphore, users = self._servers.get(origin) or (asyncio.Semaphore(self._per_server), 0)
        self._servers[origin] = (semaphore, users + 1)
        try:
            async with semaphore, self._slots:
                yield
        finally:
            semaphore, users = self._servers[origin]
            if users == 1:
                del self._servers[origin]
            else:
                self._servers[origin] = (semaphore, users - 1)

    async def run(self, work: Callable[[Executor], T]) -> T:
        """Run `work` in a fetch thread; it gets the executor its keys may be fetched in, in parallel."""
        return await asyncio.get_running_loop().run_in_executor(self._calls, work, self._keys)

    def close(self) -> None:
        self._calls.shutdown(wait=False, cancel_futures=True)
        self._keys.shutdown(wait=False, cancel_futures=True)
