"""The in-flight body budget (cds_hooks/server/inflight.py): requests beyond it queue in arrival order and all get their
answer; none is refused, none overtakes a large one that waits, and a cancelled waiter gives back nothing it
did not hold."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest
import requests

from cds_hooks.server.inflight import InflightBudget
from tests.conftest import start_live_service, stop_live_service
from tests.scenarios import fhir_builders as fb

SERVICE = "/cds-services/breast-cancer-back-pain"


async def _hold(budget: InflightBudget, size: int, order: list[str], name: str, release: asyncio.Event) -> float:
    async with budget.reserve(size) as waited_ms:
        order.append(name)
        await release.wait()
    return waited_ms


def test_requests_that_fit_run_together() -> None:
    async def main() -> None:
        budget = InflightBudget(100)
        release = asyncio.Event()
        order: list[str] = []
        tasks = [asyncio.create_task(_hold(budget, 40, order, n, release)) for n in "ab"]
        await asyncio.sleep(0.01)
        assert order == ["a", "b"] and budget.used == 80
        release.set()
        await asyncio.gather(*tasks)
        assert budget.used == 0

    asyncio.run(main())


def test_requests_beyond_the_budget_wait_in_arrival_order() -> None:
    async def main() -> None:
        budget = InflightBudget(100)
        order: list[str] = []
        first, second, third = asyncio.Event(), asyncio.Event(), asyncio.Event()
        a = asyncio.create_task(_hold(budget, 60, order, "a", first))
        await asyncio.sleep(0.01)
        big = asyncio.create_task(_hold(budget, 90, order, "big", second))
        await asyncio.sleep(0.01)
        small = asyncio.create_task(_hold(budget, 20, order, "small", third))  # would fit beside "a"
        await asyncio.sleep(0.01)
        assert order == ["a"], "nothing may overtake the large request that waits"
        first.set()
        await asyncio.sleep(0.01)
        assert order == ["a", "big"] and budget.used == 90
        second.set()
        await asyncio.sleep(0.01)
        assert order == ["a", "big", "small"]
        third.set()
        waits = await asyncio.gather(a, big, small)
        assert waits[0] < 5 and waits[1] >= 10 and waits[2] >= 10
        assert budget.used == 0

    asyncio.run(main())


def test_a_request_larger_than_the_budget_runs_alone() -> None:
    async def main() -> None:
        budget = InflightBudget(100)
        release = asyncio.Event()
        release.set()
        order: list[str] = []
        await _hold(budget, 500, order, "huge", release)
        assert order == ["huge"] and budget.used == 0

    asyncio.run(main())


def test_a_cancelled_waiter_gives_back_nothing_it_did_not_hold() -> None:
    async def main() -> None:
        budget = InflightBudget(100)
        order: list[str] = []
        hold, never = asyncio.Event(), asyncio.Event()
        a = asyncio.create_task(_hold(budget, 80, order, "a", hold))
        await asyncio.sleep(0.01)
        waiter = asyncio.create_task(_hold(budget, 50, order, "gone", never))
        later = asyncio.create_task(_hold(budget, 20, order, "later", hold))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        hold.set()
        await asyncio.gather(a, later)
        assert order == ["a", "later"] and budget.used == 0

    asyncio.run(main())


def test_a_share_holds_only_what_has_arrived() -> None:
    async def main() -> None:
        budget = InflightBudget(100)
        async with budget.share() as trickler, budget.share() as other:
            await trickler.take(1)
            assert budget.used == 1
            assert await other.take(99) == 0.0  # no wait: the trickler holds one byte, not a declared size
            assert budget.used == 100 and trickler.held == 1 and other.held == 99
        assert budget.used == 0

    asyncio.run(main())


def test_partly_received_bodies_that_fill_the_budget_still_all_finish() -> None:
    """Three bodies of 60 in a budget of 100, arriving in chunks of 10, interleaved: without the oldest's right
    to go on, all three would stop at ~33 each, waiting for room that only their own completion can free."""
    async def main() -> None:
        budget = InflightBudget(100)
        peak = 0
        done: list[str] = []

        async def body(name: str) -> None:
            nonlocal peak
            async with budget.share() as share:
                for _ in range(6):
                    await share.take(10)
                    peak = max(peak, budget.used)
                    await asyncio.sleep(0)
                done.append(name)

        await asyncio.wait_for(asyncio.gather(*(body(n) for n in "abc")), timeout=5)
        assert sorted(done) == ["a", "b", "c"] and budget.used == 0
        assert peak <= 100 + 60, "past the budget by at most one body"

    asyncio.run(main())


@pytest.mark.e2e
def test_a_burst_beyond_the_budget_is_queued_and_every_request_answered(tmp_path: Path) -> None:
    """Against `mscc-alert serve` with room for one ~0.6 MB body: six at once all get their warning card."""
    filler = [fb.medication_request(fb.rxnorm("197361", "amlodipine 5 MG Oral Tablet")) for _ in range(1200)]
    body = orjson.dumps(fb.hook_request(
        fb.patient(), conditions=[fb.breast_cancer(fb.BREAST_CANCER_SNOMED), fb.back_pain()],
        medicationRequests=filler,
    ))
    assert 300_000 < len(body) < 1_000_000
    service = start_live_service(tmp_path, {"MSCC_ALERT_MAX_INFLIGHT_BODY_BYTES": str(len(body) + 1000),
                                            "MSCC_ALERT_LOG_FORMAT": "json", "MSCC_ALERT_AUTH": "off"})
    try:
        def post(_: int) -> requests.Response:
            return requests.post(service.url(SERVICE), data=body, timeout=60,
                                 headers={"Content-Type": "application/json"})

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(post, range(6)))
    finally:
        stop_live_service(service)
    assert [a.status_code for a in answers] == [200] * 6
    assert all(a.json()["cards"][0]["indicator"] == "warning" for a in answers)
    lines = [json.loads(line) for line in service.logs().splitlines() if line.startswith("{")]
    hooks = [line for line in lines if line.get("route") == "/cds-services/{service_id}"]
    assert len(hooks) == 6
    assert any(line.get("queued_ms", 0) >= 1 for line in hooks), "with room for one body, some must have queued"


@pytest.mark.e2e
def test_a_body_that_trickles_in_gets_408_and_frees_its_share(tmp_path: Path) -> None:
    body = orjson.dumps(fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(fb.BREAST_CANCER_SNOMED),
                                                                  fb.back_pain()]))
    service = start_live_service(tmp_path, {"MSCC_ALERT_MAX_INFLIGHT_BODY_BYTES": str(len(body)),
                                            "MSCC_ALERT_BODY_READ_SECONDS": "0.5", "MSCC_ALERT_AUTH": "off"})
    try:
        port = int(service.base_url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            slow.sendall(f"POST {SERVICE} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:100])
            started = time.monotonic()
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = slow.recv(65536)
                if not chunk:
                    break
                answer += chunk
            waited = time.monotonic() - started
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), head
        outcome = json.loads(payload)
        assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "timeout"
        assert 0.4 < waited < 5
        # Its share of the budget (all of it, here) was given back: a whole request is answered at once.
        whole = requests.post(service.url(SERVICE), data=body, timeout=30,
                              headers={"Content-Type": "application/json"})
        assert whole.status_code == 200 and whole.json()["cards"][0]["indicator"] == "warning"
    finally:
        stop_live_service(service)
