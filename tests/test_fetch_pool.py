"""The fetch pool's admission (cds_hooks/protocol/fetch_pool.py): a bound per FHIR origin and one per worker, so a slow
server holds only its share, and calls to other servers still get in."""

from __future__ import annotations

import asyncio
import threading

from cds_hooks.protocol.fetch_pool import FetchPool

SLOW = ("https", "slow.example", 443)
OTHER = ("https", "other.example", 443)


async def _hold(pool: FetchPool, origin: tuple[str, str, int], admitted: list[str], name: str,
                release: asyncio.Event) -> None:
    async with pool.admit(origin):
        admitted.append(name)
        await release.wait()


def test_one_origin_gets_at_most_its_share_and_others_still_get_in() -> None:
    async def main() -> None:
        pool = FetchPool(max_calls=3, per_server=2)
        release = asyncio.Event()
        admitted: list[str] = []
        slow = [asyncio.create_task(_hold(pool, SLOW, admitted, f"slow{i}", release)) for i in range(4)]
        await asyncio.sleep(0.01)
        assert admitted == ["slow0", "slow1"]
        other = asyncio.create_task(_hold(pool, OTHER, admitted, "other", release))
        await asyncio.sleep(0.01)
        assert admitted[-1] == "other"  # the worker has a slot left, and the slow origin may not take it
        release.set()
        await asyncio.gather(*slow, other)
        assert sorted(admitted) == ["other", "slow0", "slow1", "slow2", "slow3"]
        pool.close()

    asyncio.run(main())


def test_the_worker_bound_holds_across_origins() -> None:
    async def main() -> None:
        pool = FetchPool(max_calls=2, per_server=2)
        release = asyncio.Event()
        admitted: list[str] = []
        tasks = [asyncio.create_task(_hold(pool, ("https", f"h{i}.example", 443), admitted, f"h{i}", release))
                 for i in range(3)]
        await asyncio.sleep(0.01)
        assert admitted == ["h0", "h1"]
        release.set()
        await asyncio.gather(*tasks)
        assert admitted == ["h0", "h1", "h2"]
        pool.close()

    asyncio.run(main())


def test_a_wait_can_be_bounded_and_gives_nothing_back_it_did_not_hold() -> None:
    async def main() -> None:
        pool = FetchPool(max_calls=4, per_server=1)
        release = asyncio.Event()
        admitted: list[str] = []
        holder = asyncio.create_task(_hold(pool, SLOW, admitted, "first", release))
        await asyncio.sleep(0.01)
        try:
            async with asyncio.timeout(0.05):
                await _hold(pool, SLOW, admitted, "timed-out", release)
        except TimeoutError:
            pass
        release.set()
        await holder
        # The origin's slot is free again, once: a new call gets in at once.
        async with asyncio.timeout(1):
            await _hold(pool, SLOW, admitted, "next", release)
        assert admitted == ["first", "next"]
        pool.close()

    asyncio.run(main())


def test_work_runs_in_the_pools_own_threads() -> None:
    async def main() -> None:
        pool = FetchPool(max_calls=1, per_server=1)
        names = await pool.run(lambda keys: (threading.current_thread().name,
                                              keys.submit(lambda: threading.current_thread().name).result()))
        assert names[0].startswith("fhir-call") and names[1].startswith("fhir-key")
        pool.close()

    asyncio.run(main())
