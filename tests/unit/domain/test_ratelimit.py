"""The number's rate window: sends counted by when they start, many in flight, never more than
the limit in any window; and the slots kept for messages released to wait for them."""

from __future__ import annotations

import asyncio
import time

from wacloud.domain.ratelimit import SendLimits, SlidingWindow
from wacloud.testing.fake_provider.send_metrics import max_in_window


def test_starts_are_counted_not_answers() -> None:
    # 1/s with calls that take 2.5 s: nothing is ever released, yet a send starts every second.
    window = SlidingWindow(1, margin=0.0)
    starts = [window.reserve(0.0) for _ in range(5)]
    assert starts == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_never_more_than_the_limit_in_any_window() -> None:
    window = SlidingWindow(80, margin=1e-9)  # (only so that float sums land past the edge)
    now, starts = 0.0, []
    for i in range(2000):  # askers arriving at ~300/s, none ever answered
        now = i / 300
        starts.append(window.reserve(now))
    assert starts == sorted(starts)
    assert max_in_window(starts, 1.0) == 80
    # ... and the rate is the limit, not less: 2,000 sends take 25 windows.
    assert 24.0 <= starts[-1] < 25.01


def test_a_full_burst_starts_at_once() -> None:
    window = SlidingWindow(80)
    starts = [window.reserve(10.0) for _ in range(80)]
    assert set(starts) == {10.0}  # 80 in flight together
    assert window.reserve(10.0) > 11.0  # the 81st waits for the window


def test_the_margin_widens_the_window() -> None:
    window = SlidingWindow(1, margin=0.05)
    assert window.reserve(0.0) == 0.0
    assert abs(window.reserve(0.0) - 1.05) < 1e-9


def test_a_block_holds_every_start_back() -> None:
    window = SlidingWindow(10, margin=0.0)
    window.block(5.0)
    assert window.reserve(1.0) == 5.0


async def test_acquire_keeps_many_in_flight() -> None:
    window = SlidingWindow(20)
    started = time.monotonic()
    # 20 sends whose answers never come back (no release exists): all start at once.
    await asyncio.wait_for(asyncio.gather(*(window.acquire() for _ in range(20))), 5)
    assert time.monotonic() - started < 0.5


def test_a_held_slot_is_used_on_return_and_a_missed_one_is_not() -> None:
    limits = SendLimits(margin=0.0)
    window = limits.number("n", 1)
    for _ in range(3):
        window.reserve(0.0)  # slots 0, 1, 2 taken
    start = limits.start_for("t:1", window, 0.0)
    assert start == 3.0
    limits.hold("t:1", start, 0.0)
    assert limits.start_for("t:1", window, 2.5) == 3.0  # back early: its own slot
    limits.hold("t:1", 3.0, 2.5)
    # Back after its slot passed: a new one; starting late could crowd the next send.
    assert limits.start_for("t:1", window, 3.4) == 4.0


def test_confirm_moves_only_the_latest_slot() -> None:
    limits = SendLimits(margin=0.0)
    window = limits.number("n", 1)
    start = window.reserve(0.0)
    # The row check took a moment: the latest slot simply starts now.
    assert limits.confirm(window, start, 0.2) == 0.2
    later = window.reserve(0.2)
    assert later == 1.2
    early = window.starts[0]
    # A passed slot with one reserved after it cannot move: a new one instead.
    assert limits.confirm(window, early, 0.5) == 2.2
    assert max_in_window(list(window.starts), 1.0) == 1
