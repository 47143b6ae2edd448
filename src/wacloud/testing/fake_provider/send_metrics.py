"""Measurements over recorded sends: sliding-window rates and duplicate detection.

Pure functions over already recorded arrival times, so a test's verdict never depends on how
fast the test machine is while measuring.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wacloud.testing.fake_provider.send_state import SentMessage


def max_in_window(times: Iterable[float], window: float) -> int:
    """Largest number of `times` falling in any half-open interval [t, t + window)."""
    ordered = sorted(times)
    best = start = 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def max_rate_by(
    messages: Iterable[SentMessage],
    key: Callable[[SentMessage], str | None],
    window: float,
) -> dict[str, int]:
    """Per key: the most accepted messages (not mark-reads) within any sliding window."""
    if window <= 0:
        raise ValueError("window must be > 0")
    groups: dict[str, list[float]] = defaultdict(list)
    for message in messages:
        group = key(message)
        if group is not None and message.accepted and message.is_message:
            groups[group].append(message.monotonic)
    return {group: max_in_window(times, window) for group, times in groups.items()}


def duplicate_groups(messages: Iterable[SentMessage]) -> list[list[SentMessage]]:
    groups: dict[tuple[str, str, str | None, str], list[SentMessage]] = defaultdict(list)
    for message in sorted(messages, key=lambda m: m.monotonic):
        if message.accepted and message.is_message:
            body = json.dumps(message.body, sort_keys=True, separators=(",", ":"))
            groups[(message.provider, message.sender, message.recipient, body)].append(message)
    return [group for group in groups.values() if len(group) > 1]
