"""Chakra (chakrahq.com), inbound: a BSP proxy that forwards Meta-format webhooks for its
plugins. Events are parsed by the Meta parser but routed by the Chakra plugin id.
"""

from __future__ import annotations

from wacloud.domain.model import JSON, Event, Provider
from wacloud.providers.meta import inbound as meta_inbound


def parse_webhook(payload: JSON, *, plugin_id: str) -> list[Event]:
    """Events of a Chakra pass-through webhook, keyed by `plugin_id` (the webhook URL's)."""
    return meta_inbound.parse_webhook(payload, provider=Provider.CHAKRA, channel_key=plugin_id)
