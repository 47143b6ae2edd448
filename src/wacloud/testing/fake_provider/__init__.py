"""Fake WhatsApp provider (Meta Graph API, Whapi, Chakra) served over real HTTP on localhost.

Tests, the demo and benchmarks point wacloud at it instead of the real providers::

    with FakeProviderServer() as server:
        media = server.provider.add_media(b"...", mime_type="image/jpeg")
        # GET {server.base_url}/v23.0/{media.id} with "Authorization: Bearer <token>"
        server.provider.script("5511987654321", times=2, status=400, error_code=131056)
        # POST {server.base_url}/v23.0/{phone_number_id}/messages ... then
        assert server.provider.max_rate_per_sender()["123"] <= 80

Run standalone with `python -m wacloud.testing.fake_provider --port 9900`.
"""

from wacloud.testing.fake_provider.content import CHUNK_SIZE
from wacloud.testing.fake_provider.provider import FakeProvider
from wacloud.testing.fake_provider.send_state import Script, SentMessage
from wacloud.testing.fake_provider.server import FakeProviderServer
from wacloud.testing.fake_provider.state import (
    DEFAULT_TOKEN,
    DEFAULT_URL_TTL,
    FakeMedia,
    RecordedRequest,
)

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_TOKEN",
    "DEFAULT_URL_TTL",
    "FakeMedia",
    "FakeProvider",
    "FakeProviderServer",
    "RecordedRequest",
    "Script",
    "SentMessage",
]
