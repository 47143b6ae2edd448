"""Rate limits for sending, shared by every send worker of a process.

- Per sending number: at most `mps` sends start in any sliding window of one second (Meta's
  throughput limit is per number; exceeding it costs a 130429). It is a rate, not a cap on
  sends in flight.
- Per recipient: Meta's pair rate limit, a burst of about 45 then about one message per 6 s
  (GCRA); a 131056 answer pushes only that recipient back, 4^n seconds.
Both hand out reservations in call order, so concurrent workers never overshoot together.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass


class SlidingWindow:
    """At most `limit` sends START in any window of `window` seconds.

    The provider counts requests as they arrive, whatever their answers take, so a send
    counts from when it starts and many may be in flight: a number at 1/s whose calls take
    2.5 s still sends one a second. Start times are handed out in call order (`reserve`), so
    concurrent senders never overshoot together; the margin absorbs the jitter between our
    start and the provider's arrival."""

    def __init__(self, limit: int, window: float = 1.0, margin: float = 0.05) -> None:
        self.limit = max(1, limit)
        self.window = window * (1 + margin)
        # A send that wakes later than this after its start time takes a new slot: starting
        # late would crowd the send after it into less than the window (a busy event loop
        # wakes sleepers late).
        self.late_tolerance = window * margin / 2
        # Start times handed out, ascending; some may lie in the future (reserved slots).
        self.starts: deque[float] = deque()
        self.blocked_until = 0.0

    def next_start(self, now: float) -> float:
        """When a send asking now would start (>= now). Reserves nothing."""
        starts = self.starts
        while starts and starts[0] <= now - self.window:
            starts.popleft()  # out of every window from now on
        start = max(now, self.blocked_until)
        if len(starts) >= self.limit:
            # The limit-th latest start must have left the window ending at ours.
            start = max(start, starts[-self.limit] + self.window)
        if starts:
            start = max(start, starts[-1])  # keep `starts` ordered: slots go in call order
        return start

    def reserve(self, now: float) -> float:
        """Take the next start time (>= now) and return it: the caller starts then."""
        start = self.next_start(now)
        self.starts.append(start)
        return start

    async def acquire(self) -> float:
        """Reserve the next start and wait for it; returns the start time."""
        start = self.reserve(time.monotonic())
        delay = start - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing to the provider's limit, not synchronization
        return start

    def block(self, until: float) -> None:
        """The provider asked us to wait (130429): nothing new starts before `until`."""
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
    """The limits of one process: a window per sending number, pacing per (number, recipient),
    and the start times reserved by messages released to come back for them."""

    def __init__(self, pair_burst: int = 45, pair_interval: float = 6.0,
                 margin: float = 0.05) -> None:
        self.numbers: dict[str, SlidingWindow] = {}
        self.pairs = PairPacing(pair_burst, pair_interval)
        self.margin = margin
        self.held: dict[str, float] = {}  # message key -> the start time it reserved
        self._last_sweep = 0.0

    def number(self, key: str, mps: int) -> SlidingWindow:
        window = self.numbers.get(key)
        if window is None or window.limit != max(1, mps):
            window = self.numbers[key] = SlidingWindow(mps, margin=self.margin)
        return window

    def start_for(self, message: str, window: SlidingWindow, now: float) -> float:
        """The start time of `message`'s send: the one it reserved before it was released to
        wait (still ahead), else a new one. Either way it is now the message's."""
        held = self.held.pop(message, None)
        if held is not None and held >= now and held >= window.blocked_until:
            return held
        return window.reserve(now)  # a slot it missed stays unused: never started late

    def hold(self, message: str, start: float, now: float) -> None:
        """`message` is released until just before `start`; keep the slot for its return."""
        self.held[message] = start
        if now - self._last_sweep >= 60:  # forget slots of messages that never came back
            self._last_sweep = now
            for key in [k for k, t in self.held.items() if t < now]:
                del self.held[key]

    @staticmethod
    def confirm(window: SlidingWindow, start: float, now: float) -> float:
        """The start to use once the row check is done: `start` if still ahead; if it passed
        meanwhile, a start now when nothing was reserved after it, else a new slot (starting
        late could put two sends closer than the window allows)."""
        if start >= now and start >= window.blocked_until:
            return start
        starts = window.starts
        if starts and starts[-1] == start and now >= window.blocked_until:
            starts[-1] = now  # the latest slot: moving it later crowds no one
            return now
        return window.reserve(now)

    @staticmethod
    def now() -> float:
        return time.monotonic()
