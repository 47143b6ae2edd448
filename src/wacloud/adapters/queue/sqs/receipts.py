"""What this process knows of the receipts it was handed: which message each one holds, and
whether it still does.

SQS does not say reliably whether a receipt handle is the latest of its message: AWS may accept
an older handle (its documentation: the delete "succeeds, but the message might not be
deleted"), and moto accepts any handle a message ever had. The port promises that a stale
receipt changes nothing, so each broker remembers, per message, the receipt of its last
receive: an older receipt of a message received again here, or one already acked, released or
dead-lettered, is ignored without asking SQS. Receipts from other processes cannot be known
here; for those SQS's own checks are all there is.

It also keeps the SQS message each receipt came with (body, attributes, group), which copying
or dead-lettering a message needs: SQS cannot change a message, only send a new one.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

# A receipt whose visibility ran out this long ago is forgotten (it is stale by then or its
# message was received again elsewhere); forgotten ones are passed to SQS as they are.
FORGET_AFTER_S = 600.0
PRUNE_EVERY_S = 30.0
# Receipts acked, released or moved, remembered so that a second use changes nothing: the most
# recent ones only (a receipt handle is up to 1 KB; a worker uses one right after its message).
DONE_KEPT = 10_000


@dataclass(slots=True)
class Held:
    queue_url: str
    message: dict[str, Any]  # the SQS message as received (raw body and attributes)
    receive_count: int  # as reported to the caller (receives before a copy included)
    sent_at: float
    group_id: str | None
    until: float  # time.monotonic() when its visibility runs out

    @property
    def message_id(self) -> str:
        return str(self.message["MessageId"])


class Receipts:
    """Receipts handed out by one broker (used from its event loop only)."""

    def __init__(self) -> None:
        self._held: dict[str, Held] = {}  # receipts that hold their message, as far as known
        self._latest: dict[tuple[str, str], str] = {}  # (queue url, message id) -> receipt
        self._stale: dict[str, float] = {}  # superseded receipt -> its former `until`
        self._done: OrderedDict[str, None] = OrderedDict()
        self._pruned = time.monotonic()

    def add(self, receipt: str, held: Held) -> None:
        key = (held.queue_url, held.message_id)
        previous = self._latest.get(key)
        if previous is not None:
            superseded = self._held.pop(previous, None)
            if superseded is not None:
                self._stale[previous] = superseded.until
        self._latest[key] = receipt
        self._held[receipt] = held
        self._prune()

    def lookup(self, receipt: str) -> Held | None:
        """The message `receipt` holds, or None when this process does not know the receipt
        or knows it no longer holds it."""
        return self._held.get(receipt)

    def is_stale(self, receipt: str) -> bool:
        """Whether this process knows `receipt` no longer holds its message."""
        return receipt in self._stale or receipt in self._done

    def done(self, receipt: str) -> None:
        """The receipt no longer holds its message (acked, released, moved)."""
        held = self._held.pop(receipt, None)
        if held is not None and self._latest.get((held.queue_url, held.message_id)) == receipt:
            del self._latest[(held.queue_url, held.message_id)]
        self._done[receipt] = None
        if len(self._done) > DONE_KEPT:
            self._done.popitem(last=False)

    def extend(self, receipt: str, seconds: float) -> None:
        held = self._held.get(receipt)
        if held is not None:
            held.until = max(held.until, time.monotonic() + seconds)

    def __len__(self) -> int:
        return len(self._held)

    def _prune(self) -> None:
        now = time.monotonic()
        if now - self._pruned < PRUNE_EVERY_S:
            return
        self._pruned = now
        horizon = now - FORGET_AFTER_S
        for receipt, held in list(self._held.items()):
            if held.until < horizon:
                del self._held[receipt]
                key = (held.queue_url, held.message_id)
                if self._latest.get(key) == receipt:
                    del self._latest[key]
        for receipt, until in list(self._stale.items()):
            if until < horizon:
                del self._stale[receipt]
