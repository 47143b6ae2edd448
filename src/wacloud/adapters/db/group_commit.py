"""Group commit for a tenant database: many small concurrent writes, one transaction.

The send and save stages each write one outbox row per message (count the attempt, then store
the result). With dozens of sends in flight, one transaction and one fsync per write made the
database's commit rate the ceiling of the whole outbound pipeline. Here a writer thread takes
every write waiting at that moment and runs them in ONE transaction, then wakes the callers
(the same idea as the SQLite queue's writer). A write that fails does not fail its neighbours:
the batch is rolled back and each write is redone in a transaction of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.engine import Connection, Engine

T = TypeVar("T")


@dataclass(slots=True)
class _Write:
    fn: Callable[[Connection], Any]
    fut: asyncio.Future[Any]


class GroupCommit:
    def __init__(self, engine: Engine, name: str = "tenant") -> None:
        self.engine = engine
        self.transactions = 0  # lets tests see that concurrent writes were grouped
        self._pending: list[_Write] = []
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"group-commit:{name}",
                                        daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn(connection)` in the next shared transaction; return once it is committed."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        with self._cond:
            if self._closing:
                raise RuntimeError("GroupCommit is closed")
            self._pending.append(_Write(fn, fut))
            self._cond.notify()
        return await fut

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending, []
            self._commit(batch)

    def _commit(self, batch: list[_Write]) -> None:
        try:
            with self.engine.begin() as conn:
                results = [(write, write.fn(conn)) for write in batch]
            self.transactions += 1
        except BaseException as exc:
            if len(batch) == 1:
                _settle(batch[0].fut, None, exc)
                return
            for write in batch:  # find the one that fails; the others still commit
                self._commit([write])
            return
        for write, result in results:
            _settle(write.fut, result, None)


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    def apply() -> None:
        if fut.done():  # the caller was cancelled
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
        fut.get_loop().call_soon_threadsafe(apply)
