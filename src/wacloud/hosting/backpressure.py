"""Backpressure on ingest: while `inbound.raw` holds `WACLOUD_INBOUND_QUEUE_LIMIT` messages, or
the data dir's disk has less than `WACLOUD_MIN_FREE_DISK_MB` free, webhooks are answered 503 with
Retry-After (providers retry them later) instead of filling the disk while the stages are far
behind. Below that, ingest only appends, whatever the lag.

The hot path reads one attribute: the state is re-read in a thread (the queue's depth, cheap
while its ids span fewer messages than the limit, and the free disk space) at most every
REFRESH_S, and no sooner than COST_FACTOR times the last reading took (a count over a deep
queue takes tens of ms). A refusal never rests on an old reading: while refusing, a request
finding the state older than REFRESH_S waits for a new one.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

REFRESH_S = 0.1
COST_FACTOR = 10.0
RETRY_AFTER_S = 30


class IngestGate:
    """Whether ingest may append to its queue. `full(limit)`: whether the queue holds `limit`
    messages or more (`SqliteQueue.holds_at_least`)."""

    def __init__(self, full: Callable[[int], bool], data_dir: Path, limit: int,
                 min_free_mb: int, *, interval: float = REFRESH_S) -> None:
        self._full = full
        self.data_dir = data_dir
        self.limit = limit
        self.min_free_bytes = max(min_free_mb, 0) * 1024 * 1024
        self.interval = interval
        self.open = True
        self.reason: str | None = None
        self._read_at = -float("inf")  # monotonic time of the last reading
        self._next_after = 0.0  # no reading before this much after the last one
        self._reading: asyncio.Task[None] | None = None

    def admit(self) -> bool:
        """The last reading (starting a new one in the background when it is due)."""
        if time.monotonic() - self._read_at >= self._next_after and self._reading is None:
            self._reading = asyncio.get_running_loop().create_task(self._read())
        return self.open

    async def admit_fresh(self) -> bool:
        """For a request `admit` refused: a reading not older than `interval` decides."""
        if time.monotonic() - self._read_at >= self.interval:
            if self._reading is None:
                self._reading = asyncio.get_running_loop().create_task(self._read())
            await asyncio.shield(self._reading)
        return self.open

    def state(self) -> dict[str, object]:
        """For /readyz."""
        return {"accepting": self.open, "reason": self.reason, "queue_limit": self.limit,
                "min_free_disk_mb": self.min_free_bytes // (1024 * 1024)}

    async def _read(self) -> None:
        started = time.monotonic()
        try:
            reason = await asyncio.to_thread(self._check)
        except Exception as exc:  # cannot tell: keep the last state, try again next time
            log.warning("ingest backpressure: could not read the queue depth (%s)",
                        type(exc).__name__)
            reason = self.reason
        finally:
            self._read_at = time.monotonic()
            self._next_after = max(self.interval, COST_FACTOR * (self._read_at - started))
            self._reading = None
        if (reason is None) != self.open:
            if reason is None:
                log.warning("ingest backpressure: accepting webhooks again")
            else:
                log.warning("ingest backpressure: answering webhooks 503 (%s)", reason)
        self.open, self.reason = reason is None, reason

    def _check(self) -> str | None:
        """Why ingest must refuse now, or None."""
        if self.min_free_bytes:
            free = shutil.disk_usage(self.data_dir).free
            if free < self.min_free_bytes:
                return (f"{free // (1024 * 1024)} MB free in the data dir, under "
                        f"WACLOUD_MIN_FREE_DISK_MB")
        if self._full(self.limit):
            return f"the inbound queue holds WACLOUD_INBOUND_QUEUE_LIMIT ({self.limit}) messages"
        return None
