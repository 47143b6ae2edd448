"""Runners from the composition root's stage specs: each spec's input queue, handlers and
concurrency become a `StageRunner`, with the settings' database-retry and shutdown limits."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from wacloud.adapters.queue.base import Queue
from wacloud.bootstrap import Gateway, StageSpec
from wacloud.hosting.runner import StageRunner
from wacloud.settings import Settings


def runner_for(spec: StageSpec, queues: Mapping[str, Queue], settings: Settings) -> StageRunner:
    runner = StageRunner(
        spec.name, queues[spec.consumes], spec.handler, queues,
        concurrency=spec.concurrency, batch=spec.batch, wait_seconds=spec.wait_seconds,
        batch_handler=spec.batch_handler,
        defer_to=queues[spec.defer_to] if spec.defer_to is not None else None,
        deferred_concurrency=spec.deferred_concurrency,
        # A tenant database that is down delays a stage for hours, never loses its input.
        db_retry_period=settings.db_retry_period_s,
        db_retry_max_delay=settings.db_retry_max_delay_s,
        shutdown_grace=settings.shutdown_grace_s)
    return runner


def stage_runners(gateway: Gateway, names: Collection[str] | None = None) -> list[StageRunner]:
    """The runners of the gateway's stages (all, or those `names`)."""
    return [runner_for(spec, gateway.queues, gateway.settings) for spec in gateway.stages()
            if names is None or spec.name in names]
