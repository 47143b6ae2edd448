"""Rate limits for sending, shared by every send worker of a process.

- Per sending number: at most `mps` sends in any sliding window of one second (Meta's
  throughput limit is per number; exceeding it costs a 130429).
- Per recipient: Meta's pair rate limit, a burst of about 45 then about one message per 6 s
  (GCRA); a 131056 answer pushes only that recipient back, 4^n seconds.
Both hand out reservations in call order, so concurrent workers never overshoot together.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass


class Slot:
    """One send's place in a window: held from before the request until its answer."""

    __slots__ = ("done_at",)

    def __init__(self) -> None:
        self.done_at: float | None = None


class SlidingWindow:
    """At most `limit` sends in any window of `window` seconds, as the provider sees them.

    The provider sees a request somewhere between our sending it and its answer, so a slot
    only ages out `window` seconds after its answer: then no window at the provider can ever
    hold more than `limit` requests, however the network delays them."""

    def __init__(self, limit: int, window: float = 1.0, margin: float = 0.01) -> None:
        self.limit = max(1, limit)
        self.window = window * (1 + margin)
        self.slots: list[Slot] = []
        self.blocked_until = 0.0
        self._wake = asyncio.Event()

    async def acquire(self) -> Slot:
        while True:
            now = time.monotonic()
            if now < self.blocked_until:
                await asyncio.sleep(self.blocked_until - now)  # the provider asked us to wait
                continue
            horizon = now - self.window
            self.slots = [s for s in self.slots if s.done_at is None or s.done_at > horizon]
            if len(self.slots) < self.limit:
                slot = Slot()
                self.slots.append(slot)
                return slot
            finished = [s.done_at for s in self.slots if s.done_at is not None]
            timeout = min(finished) + self.window - now if finished else None
            wake = self._wake
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)

    def release(self, slot: Slot) -> None:
        slot.done_at = time.monotonic()
        self._wake.set()
        self._wake = asyncio.Event()

    def block(self, until: float) -> None:
        self.blocked_until = max(self.blocked_until, until)


@dataclass(slots=True)
class _Pair:
    tat: float  # theoretical arrival time (GCRA)
    penalties: int = 0


class PairPacing:
    """GCRA per recipient: `burst` messages at once, then one every `interval` seconds."""

    def __init__(self, burst: int = 45, interval: float = 6.0) -> None:
        self.burst = max(1, burst)
        self.interval = interval
        self.pairs: dict[str, _Pair] = {}
        self._last_sweep = 0.0

    def delay(self, key: str, now: float) -> float:
        """Seconds until `key` may receive its next message (0 = now). Does not reserve."""
        pair = self.pairs.get(key)
        if pair is None:
            return 0.0
        tolerance = (self.burst - 1) * self.interval
        return max(0.0, max(pair.tat, now) - tolerance - now)

    def reserve(self, key: str, now: float) -> None:
        pair = self.pairs.setdefault(key, _Pair(tat=now))
        pair.tat = max(pair.tat, now) + self.interval
        self._sweep(now)

    def confirm(self, key: str) -> None:
        """A send to `key` went through: forget earlier penalties."""
        pair = self.pairs.get(key)
        if pair is not None:
            pair.penalties = 0

    def penalize(self, key: str, now: float) -> float:
        """The provider said this pair is over its limit (131056): back off 4^n seconds."""
        pair = self.pairs.setdefault(key, _Pair(tat=now))
        wait = float(4 ** min(pair.penalties, 5))
        pair.penalties += 1
        tolerance = (self.burst - 1) * self.interval
        pair.tat = max(pair.tat, now + wait + tolerance)
        return wait

    def _sweep(self, now: float) -> None:
        # Forget idle recipients so the table stays as small as the active conversations.
        if now - self._last_sweep < 60:
            return
        self._last_sweep = now
        stale = [k for k, p in self.pairs.items() if p.tat < now and p.penalties == 0]
        for key in stale:
            del self.pairs[key]


class SendLimits:
    """The limits of one process: a window per sending number, pacing per (number, recipient)."""

    def __init__(self, pair_burst: int = 45, pair_interval: float = 6.0) -> None:
        self.numbers: dict[str, SlidingWindow] = {}
        self.pairs = PairPacing(pair_burst, pair_interval)

    def number(self, key: str, mps: int) -> SlidingWindow:
        window = self.numbers.get(key)
        if window is None or window.limit != max(1, mps):
            window = self.numbers[key] = SlidingWindow(mps)
        return window

    @staticmethod
    def now() -> float:
        return time.monotonic()
