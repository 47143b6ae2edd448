"""Reading a queue without consuming it (dead letters, deletes by id), synchronous.

SQS has no peek and no way to reach a message by its id: a message is read by receiving it,
which hides it and counts one receive. A scan therefore receives what is visible, holding each
message for `hold` seconds so that the next receive returns others, hands the chosen ones to
`take` (which deletes or moves them) and gives the rest back (visibility 0) at the end.

What a scan cannot see: messages in flight or delayed, and, in a FIFO queue, the messages of a
group queued behind ten of its own received in one scan (SQS hands out no more of a group while
some are in flight). Dead letters this adapter writes to a FIFO dead-letter queue each have a
group of their own for that reason; letters SQS moved there itself keep theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wacloud.adapters.queue.sqs.calls import BATCH, counts, receive, release_all

HOLD_S = 30  # how long a scanned message stays hidden while the scan goes on
# Each page is a short long poll: it answers as soon as messages are there, and an empty answer
# means the queue had none visible (a short poll on AWS asks only some of its servers).
PAGE_WAIT_S = 1


def scan(client: Any, url: str, *, wanted: set[str] | None = None, limit: int | None = None,
         take: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """The visible messages of `url` that are chosen (all, or those whose MessageId is in
    `wanted`), at most `limit`; `take` gets them page by page and must delete or move them
    (without it the scan is a peek: every message is given back).

    The scan ends at an empty page, or once it has seen as many messages as SQS counted
    visible when it began and a page came back short (SQS's count may lag behind sends by up
    to a minute, so a count of 0 is not believed: an empty page has the last word)."""
    expected = counts(client, url)["visible"]
    chosen: list[dict[str, Any]] = []
    held: list[str] = []  # receipts to give back at the end
    seen: set[str] = set()
    found: set[str] = set()
    try:
        while wanted is None or found != wanted:
            room = BATCH if limit is None else min(BATCH, limit - len(chosen))
            if room <= 0:
                break
            page = receive(client, url, room, HOLD_S, PAGE_WAIT_S)
            fresh = [m for m in page if m["MessageId"] not in seen]
            # A message seen already came back (its hold ran out): give it back again.
            held.extend(m["ReceiptHandle"] for m in page if m["MessageId"] in seen)
            if not fresh:
                break
            seen.update(m["MessageId"] for m in fresh)
            picked = [m for m in fresh if wanted is None or m["MessageId"] in wanted]
            found.update(m["MessageId"] for m in picked)
            held.extend(m["ReceiptHandle"] for m in fresh
                        if take is None or m not in picked)
            chosen.extend(picked)
            if take is not None and picked:
                take(picked)
            if 0 < expected <= len(seen) and len(page) < room:
                break
    finally:
        if held:
            release_all(client, url, held)
    return chosen
