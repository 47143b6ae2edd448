"""Outbound send endpoints: reserved for a later issue, deliberately empty for now.

Planned here (spec sections 3, 5.4 and 6), all recorded like every other provider request:
- Meta: `POST /{version}/{phone_number_id}/messages` -> `{messaging_product, contacts, messages}`
  with a fake wamid, plus injectable Graph errors (131056, 130429, 190, ...).
- Whapi: `POST /messages/{type}` -> `{"sent": true, "message": {...}}`.
- Chakra pass-through:
  `POST /v1/ext/plugin/whatsapp/{plugin_id}/api/{version}/{phone_number_id}/messages`
  -> `{"_data": {"whatsappMessageId": ...}, "_meta": {}, "_errors": []}`.

`FakeProvider` mounts these routes before the media routes, whose Meta resolve pattern
`/{version}/{media_id}` would otherwise shadow two-segment paths such as `/messages/text`.
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from wacloud.testing.fake_provider.state import ProviderState


def send_routes(state: ProviderState) -> list[BaseRoute]:
    del state  # used once the send endpoints exist
    return []
