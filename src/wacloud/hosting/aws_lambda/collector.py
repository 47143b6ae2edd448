"""The collector function: on a schedule (EventBridge), claim pending outbox rows of every
tenant and queue them on `outbound.send`.

One invocation runs collect passes for `WACLOUD_LAMBDA_COLLECT_WINDOW_S` seconds (0: one
pass), `WACLOUD_COLLECT_POLL_S` apart, and never past the function's own deadline: with a
one-minute schedule and a 50 s window a row waits about a poll interval, not a minute, as in
the original system's collector (twenty passes a minute). The first pass also returns stale
reservations to pending and queues again rows whose queue message may have been lost.
Concurrent collectors (an invocation overlapping the next) never claim the same row.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from wacloud.hosting.aws_lambda.runtime import Container, container
from wacloud.stages.collect import collect

# Seconds kept free before the function's timeout: the last pass must end in time.
DEADLINE_MARGIN_S = 10.0


def time_left(context: Any) -> float | None:
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return None if remaining is None else remaining() / 1000.0 - DEADLINE_MARGIN_S


async def run(current: Container, context: Any) -> dict[str, Any]:
    await current.fresh()
    settings = current.settings
    ctx = current.gateway.collect_context()
    window = settings.lambda_collect_window_s
    left = time_left(context)
    if left is not None:
        window = min(window, left)
    deadline = time.monotonic() + window
    queued = passes = 0
    while True:
        found = await collect(ctx, reclaim=passes == 0)
        queued += found
        passes += 1
        pause = 0.0 if found >= ctx.batch else settings.collect_poll_s
        if time.monotonic() + pause >= deadline:
            break
        await asyncio.sleep(pause)  # the poll interval: nothing to wait for but time
    return {"queued": queued, "passes": passes}


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda entry point: `wacloud.hosting.aws_lambda.collector.handler`."""
    current = container()
    return current.run(run(current, context))
