"""Worker processes for the local engine that keep what they screened.

A multiprocessing.Pool sends every result back: for the sweep, every line kept for a patient (on the 1 GB
benchmark export, 77,000 lines, 100 MB pickled, unpickled and copied through a pipe, to evaluate 114 patients
whose lines are 276 of them). Here each worker holds the lines it kept and answers with counts and roles only;
the parent then asks every worker for the lines of the patients it will evaluate. Tasks are still handed out
one at a time to whichever worker is free, so a large chunk never leaves the other workers idle.

`InProcess` runs the same tasks in this process, with the same calls, for one worker.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import traceback
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class ShownFailure(Exception):
    """An exception whose message is safe to show as it is (it says what failed in our own words, with nothing of
    the data): a failed task reports it whole, not by type and place alone."""


class WorkerFailed(RuntimeError):
    """A task raised in a worker process, or the worker died. The message names the exception's type and
    where it was raised, never its text: that can quote the data (a resource, a patient id)."""


class Workers(Protocol):
    def map(self, function: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        """Each task's result, in the order they finish."""
        ...

    def each(self, function: Callable[[T], R], argument: T) -> list[R]:
        """`function(argument)` once in every worker (e.g. to ask each for what it holds)."""
        ...


class InProcess:
    """The tasks run here, one after another (one worker); a task that raises is reported as a worker's is."""

    def map(self, function: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        for task in tasks:
            yield self._run(function, task)

    def each(self, function: Callable[[T], R], argument: T) -> list[R]:
        return [self._run(function, argument)]

    @staticmethod
    def _run(function: Callable[[T], R], argument: T) -> R:
        try:
            return function(argument)
        except Exception as exc:
            raise WorkerFailed(_failure(exc, "the sweep")) from None


class Processes:
    """`count` worker processes, each serving tasks over its own pipe until closed."""

    def __init__(self, count: int, context: multiprocessing.context.BaseContext,
                 initializer: Callable[[T], object] | None = None, argument: object = None) -> None:
        """`initializer(argument)` runs first in each worker (one that was spawned has loaded nothing)."""
        self._connections: list[Connection] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []
        for _ in range(count):
            mine, theirs = context.Pipe()
            process = context.Process(target=_serve, args=(theirs, initializer, argument),  # type: ignore[attr-defined]
                                      daemon=True)
            process.start()
            theirs.close()
            self._connections.append(mine)
            self._processes.append(process)

    def map(self, function: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        pending = iter(tasks)
        busy: set[Connection] = set()
        for connection in self._connections:
            if not self._send(connection, function, pending):
                break
            busy.add(connection)
        while busy:
            for ready in wait(list(busy)):
                assert isinstance(ready, Connection)
                result = self._receive(ready)
                if not self._send(ready, function, pending):
                    busy.discard(ready)
                yield result

    def each(self, function: Callable[[T], R], argument: T) -> list[R]:
        for connection in self._connections:
            connection.send((function, argument))
        return [self._receive(connection) for connection in self._connections]

    def close(self) -> None:
        for connection in self._connections:
            with contextlib.suppress(OSError):  # that worker is gone already
                connection.send(None)
            connection.close()
        for process in self._processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @staticmethod
    def _send(connection: Connection, function: Callable[[T], Any], pending: Iterator[T]) -> bool:
        for task in pending:
            connection.send((function, task))
            return True
        return False

    @staticmethod
    def _receive(connection: Connection) -> Any:
        try:
            ok, value = connection.recv()
        except EOFError:
            raise WorkerFailed("a sweep worker process died") from None
        if not ok:
            raise WorkerFailed(value)
        return value


def _serve(connection: Connection, initializer: Callable[[Any], object] | None, argument: object) -> None:
    """A worker's loop: run each (function, argument) it is sent and send back (True, result), or (False, the
    traceback) when the function raised; stop at None or when the parent is gone."""
    if initializer is not None:
        initializer(argument)
    while True:
        try:
            message = connection.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if message is None:
            return
        function, argument = message
        try:
            reply: tuple[bool, Any] = (True, function(argument))
        except Exception as exc:  # reported to the parent, which raises it there
            reply = (False, _failure(exc, "a sweep worker"))
        try:
            connection.send(reply)
        except BrokenPipeError:
            return  # the parent stopped listening (another task failed): nothing to report to


def _failure(exc: Exception, where: str) -> str:
    """What a failed task says: the exception's type and the place it was raised, never its text (but for a
    ShownFailure, made to be shown)."""
    if isinstance(exc, ShownFailure):
        return str(exc)
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return f"{type(exc).__name__} in {where}, at {frame.filename}:{frame.lineno} ({frame.name})"
