"""Trace ids and the log context: what lets one message be followed through the log.

An inbound message's trace id is made at ingest (one per webhook, carried in the `inbound.raw`
envelope header and on `inbound.events`); an outbound message's is derived from its tenant and
outbox row id (`outbound_trace_id`), so the API, the collector, the send and save stages and
the receipt all name the same trace without storing it anywhere. `log_context` puts the trace
and the message's tenant, channel, stage and id in a context variable that the JSON log
formatter reads, so every line logged meanwhile (a warning deep in an adapter too) carries
them.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator
from contextvars import ContextVar

FIELDS = ("trace_id", "tenant", "channel", "stage", "message_id")

LOG_CONTEXT: ContextVar[dict[str, str] | None] = ContextVar("wacloud_log_context", default=None)


def new_trace_id() -> str:
    """16 hex digits, random. Not from os.urandom: its system call lets go of the GIL, and on
    the webhook path the queue writer thread then takes it for a while (bench/ingest.py: 16k
    -> 13k req/s). A trace id only has to be unique, not unguessable."""
    return f"{random.getrandbits(64):016x}"


def outbound_trace_id(tenant: str, row_id: int) -> str:
    """The trace id of outbox row `row_id` of `tenant`: the same wherever it is computed."""
    return hashlib.sha256(f"outbound:{tenant}:{row_id}".encode()).hexdigest()[:16]


def current() -> dict[str, str]:
    return LOG_CONTEXT.get() or {}


@contextlib.contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Add `fields` (those of FIELDS that are not None) to the log context meanwhile."""
    merged = {**current(), **{k: str(v) for k, v in fields.items() if v is not None}}
    token = LOG_CONTEXT.set(merged)
    try:
        yield
    finally:
        LOG_CONTEXT.reset(token)


def set_stage(stage: str) -> None:
    """Name the stage for the rest of this task (and the tasks it starts)."""
    LOG_CONTEXT.set({**current(), "stage": stage})
