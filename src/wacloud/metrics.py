"""Prometheus metrics shared by every hosting mode."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

WEBHOOKS = Counter("wacloud_webhooks_total", "Webhook requests by provider and result",
                   ["provider", "result"])
STAGE_MESSAGES = Counter("wacloud_stage_messages_total", "Queue messages handled by stage",
                         ["stage", "result"])
STAGE_SECONDS = Histogram("wacloud_stage_seconds", "Time to handle one queue message",
                          ["stage"])
PARKED = Counter("wacloud_parked_total", "Payloads parked for an operator", ["stage"])
