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
INBOUND_REFUSED = Counter(
    "wacloud_inbound_refused_total",
    "Inbound events refused, never stored: the body's signature does not verify with the app "
    "secret of the channel the event routes to", ["provider", "reason"])
META_OTHER_OBJECTS = Counter(
    "wacloud_meta_other_objects_total",
    "Signed Meta webhooks of another product (object other than whatsapp_business_account), "
    "answered 200 and not stored", ["object"])
CREDENTIALS_UNAUTHENTICATED = Counter(
    "wacloud_credentials_unauthenticated_total",
    "Calls to the credentials endpoint without a valid service key (not written to the "
    "audit)", ["via", "outcome"])
