"""The fault harness (`bench/chaos.py`) in short: a few SIGKILLs and every fault kind once under
load for ~20 s; nothing lost, no duplicate row, nothing stuck, and a row sent twice only if its
send was in flight at a kill."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.e2e.chaos_checks import assert_nothing_lost

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import chaos  # noqa: E402 - bench/ is not a package; its modules import each other by name


def test_short_chaos_loses_nothing() -> None:
    cfg = chaos.Config(seed=7, duration=18.0, kills=3, inbound_rate=15.0, outbound_rate=6.0,
                       drain_timeout=30.0, media_stall_s=6.0)
    result = chaos.run(cfg)
    print(result.line())
    assert result.kills == 3
    assert_nothing_lost(result)
