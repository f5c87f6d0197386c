"""The local engine's worker processes (cds_hooks/sweep/workers.py): real processes, real pipes."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from cds_hooks.sweep.workers import InProcess, Processes, WorkerFailed

_kept: list[int] = []  # what this process was given to keep (a worker's own, after fork)


def _square(n: int) -> int:
    return n * n


def _keep(n: int) -> int:
    _kept.append(n)
    return os.getpid()


def _hand_over(_: None) -> tuple[int, list[int]]:
    held = list(_kept)
    _kept.clear()
    return os.getpid(), held


def _fail(n: int) -> int:
    raise ValueError(f"no square for {n}")


def _die(_: int) -> int:
    os._exit(3)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_every_task_runs_once_and_each_worker_keeps_what_it_was_given(method: str) -> None:
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} here")
    with Processes(2, multiprocessing.get_context(method)) as workers:
        assert sorted(workers.map(_square, range(50))) == [n * n for n in range(50)]
        pids = set(workers.map(_keep, range(40)))
        held = workers.each(_hand_over, None)
    # Both processes took tasks, and what each kept came back from that process alone, every task once.
    assert {pid for pid, _ in held} == pids and len(pids) == 2 and os.getpid() not in pids
    assert sorted(n for _, kept in held for n in kept) == list(range(40))


def test_fewer_tasks_than_workers_and_no_tasks() -> None:
    with Processes(3, multiprocessing.get_context("fork")) as workers:
        assert list(workers.map(_square, [7])) == [49]
        assert list(workers.map(_square, [])) == []
        assert sorted(workers.map(_square, [1, 2])) == [1, 4]


def test_a_task_that_raises_is_raised_in_the_parent_by_type_and_place_never_its_text() -> None:
    with Processes(2, multiprocessing.get_context("fork")) as workers, pytest.raises(WorkerFailed) as failed:
        list(workers.map(_fail, range(3)))
    assert "ValueError" in str(failed.value) and "test_sweep_workers.py" in str(failed.value)
    assert "_fail" in str(failed.value) and "no square" not in str(failed.value)  # its text could quote data


def test_a_worker_that_dies_is_an_error_not_a_hang() -> None:
    with Processes(2, multiprocessing.get_context("fork")) as workers, pytest.raises(WorkerFailed, match="died"):
        list(workers.map(_die, range(4)))


def test_in_process_runs_the_same_calls_here() -> None:
    _kept.clear()
    workers = InProcess()
    assert list(workers.map(_square, range(4))) == [0, 1, 4, 9]
    assert set(workers.map(_keep, [5, 6])) == {os.getpid()}
    assert workers.each(_hand_over, None) == [(os.getpid(), [5, 6])]


def test_in_process_reports_a_task_that_raises_as_a_worker_does() -> None:
    for call in (lambda workers: list(workers.map(_fail, range(3))), lambda workers: workers.each(_fail, 4)):
        with pytest.raises(WorkerFailed) as failed:
            call(InProcess())
        assert "ValueError in the sweep" in str(failed.value) and "_fail" in str(failed.value)
        assert "no square" not in str(failed.value) and failed.value.__cause__ is None  # its text could quote data
