"""What every short run of the fault harness must show, whichever engine it ran on."""

from __future__ import annotations

from typing import Any


def assert_nothing_lost(result: Any) -> None:
    """`result`: a `chaos.Result` (bench/ is not a package, hence no type here)."""
    assert result.inbound_acked > 0 and result.inbound_stored >= result.inbound_acked
    assert result.lost == 0
    assert result.duplicate_rows == 0
    assert result.stuck == 0
    assert result.dlq_without_reason == 0
    assert result.duplicate_sends <= result.in_flight_at_kill
    assert result.unexplained_duplicate_sends == 0
    assert result.crashes == 0, "a process exited by itself"
    assert result.drain_s == result.drain_s, "did not drain within 30 s of the last fault"
