"""Graceful stop of the long-running commands (`serve`, `worker`) on SIGTERM or SIGINT.

The first signal starts the stop (the caller's `begin`: listeners stop accepting, stages stop
receiving, in-flight work gets `WACLOUD_SHUTDOWN_GRACE_S`); a second one exits at once, for an
operator who will not wait (what was in flight then comes back after its visibility timeout or
lease, as after a crash). `wait_stopping` is the deadline for tasks that should have ended.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Beyond the grace: a runner's grace starts once its current long poll returns, and releasing
# what is still held takes a commit.
MARGIN_S = 3.0
FORCED_EXIT_CODE = 1


def install(begin: Callable[[], None]) -> None:
    """Call `begin` at the first SIGTERM/SIGINT, exit the process at once at the second."""
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def handle(signum: int) -> None:
        received.append(signum)
        if len(received) == 1:
            log.info("%s received: stopping (a second signal exits at once)",
                     signal.Signals(signum).name)
            begin()
            return
        log.warning("%s received again: exiting now, without waiting for work in flight",
                    signal.Signals(signum).name)
        logging.shutdown()
        os._exit(FORCED_EXIT_CODE)

    for signum in SIGNALS:
        try:
            loop.add_signal_handler(signum, handle, signum)
        except (RuntimeError, ValueError, NotImplementedError):  # not the main thread's loop
            log.debug("no handler for %s here: the embedding program stops us",
                      signal.Signals(signum).name)


async def wait_stopping(tasks: Sequence[asyncio.Future[Any]], stop: asyncio.Event,
                        grace: float) -> None:
    """Wait for `tasks`, raising the first failure; once `stop` is set they get `grace` (plus
    a margin) to end by themselves, then those left are cancelled."""
    if not tasks:
        return
    gathered: asyncio.Future[Any] = asyncio.gather(*tasks)
    stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({gathered, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not gathered.done():
            _, late = await asyncio.wait(set(tasks), timeout=grace + MARGIN_S)
            if late:
                log.warning("%d tasks still running %.0f s after the stop; cancelling them",
                            len(late), grace + MARGIN_S)
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
        for task in tasks:
            failure = None if task.cancelled() or not task.done() else task.exception()
            if failure is not None:
                raise failure
    finally:
        stopping.cancel()
        if not gathered.done():
            gathered.cancel()
        # A cancelled gather's exception must be retrieved, or asyncio logs it at exit.
        gathered.add_done_callback(lambda g: g.cancelled() or g.exception())
