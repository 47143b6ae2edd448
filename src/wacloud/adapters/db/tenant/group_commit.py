"""Group commit for a tenant database: many small concurrent writes, one transaction.

The send and save stages each write one outbox row per message (count the attempt, then store
the result). With dozens of sends in flight, one transaction and one fsync per write made the
database's commit rate the ceiling of the whole outbound pipeline. Here a writer thread takes
every write waiting at that moment and runs them in ONE transaction, then wakes the callers
(the SQLite queue's writer runs on the same `BatchingThread`). A write that fails does not
fail its neighbours: the batch is rolled back and each write is redone on its own. Unless the
failure is the database's (down, locked): then the whole batch fails at once, for its callers
to retry later; redone one by one, each write would wait out the same lock again (SQLite's
busy timeout, 30 s), so a hundred sends in flight took fifty minutes to hear of a lock, and
held the tenant's only connection all that while.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.engine import Connection, Engine

from wacloud.adapters.batching import BatchingThread, settle_threadsafe
from wacloud.adapters.db.errors import is_database_unavailable

T = TypeVar("T")


@dataclass(slots=True)
class _Write:
    fn: Callable[[Connection], Any]
    fut: asyncio.Future[Any]


class GroupCommit:
    def __init__(self, engine: Engine, name: str = "tenant") -> None:
        self.engine = engine
        self.transactions = 0  # lets tests see that concurrent writes were grouped
        self._writer: BatchingThread[_Write] = BatchingThread(self._commit,
                                                              f"group-commit:{name}")

    async def run(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn(connection)` in the next shared transaction; return once it is committed."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._writer.submit(_Write(fn, fut), "GroupCommit is closed")
        return await fut

    def close(self) -> None:
        self._writer.close()

    def _commit(self, batch: list[_Write]) -> None:
        try:
            with self.engine.begin() as conn:
                results = [(write.fut, write.fn(conn), None) for write in batch]
            self.transactions += 1
        except BaseException as exc:
            if len(batch) == 1 or is_database_unavailable(exc):
                settle_threadsafe([(write.fut, None, exc) for write in batch])
                return
            for write in batch:  # find the one that fails; the others still commit
                self._commit([write])
            return
        settle_threadsafe(results)
