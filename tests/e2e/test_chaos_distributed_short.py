"""The fault harness (`bench/chaos.py --engine rabbitmq`) in short: the distributed engine on
RabbitMQ (`serve --no-workers` and two `wacloud worker` processes, a fresh virtual host) under
load, with the broker unreachable for a few seconds (a TCP proxy between wacloud and RabbitMQ
closes every connection and refuses new ones) and one SIGKILL of a worker: nothing lost, no
duplicate row, nothing stuck, no process exiting by itself. Skips without RabbitMQ (fails with
WACLOUD_REQUIRE_SERVICES=1)."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.e2e.chaos_checks import assert_nothing_lost

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import chaos  # noqa: E402 - bench/ is not a package; its modules import each other by name


def test_short_distributed_chaos_survives_a_broker_outage() -> None:
    cfg = chaos.Config(seed=5, duration=16.0, kills=1, inbound_rate=12.0, outbound_rate=5.0,
                       drain_timeout=30.0, media_stall_s=6.0, engine="rabbitmq",
                       kinds=["broker_outage"])
    result = chaos.run(cfg)
    print(result.line())
    assert result.kills == 1
    assert result.faults == 2, "the broker outage and the kill were not both injected"
    assert_nothing_lost(result)
