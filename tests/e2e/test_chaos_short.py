"""The fault harness (`bench/chaos.py`) in short: a few SIGKILLs and every fault kind once under
load for ~20 s; nothing lost, no duplicate row, nothing stuck, and a row sent twice only if its
send was in flight at a kill."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import chaos  # noqa: E402 - bench/ is not a package; its modules import each other by name


def test_short_chaos_loses_nothing() -> None:
    cfg = chaos.Config(seed=7, duration=18.0, kills=3, inbound_rate=15.0, outbound_rate=6.0,
                       drain_timeout=30.0, media_stall_s=6.0)
    result = chaos.run(cfg)
    print(result.line())
    assert result.kills == 3
    assert result.inbound_acked > 0 and result.inbound_stored >= result.inbound_acked
    assert result.lost == 0
    assert result.duplicate_rows == 0
    assert result.stuck == 0
    assert result.dlq_without_reason == 0
    assert result.duplicate_sends <= result.in_flight_at_kill
    assert result.unexplained_duplicate_sends == 0
    assert result.crashes == 0, "serve exited by itself"
    assert result.drain_s == result.drain_s, "did not drain within 30 s of the last fault"
