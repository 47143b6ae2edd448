"""`FakeProvider`: the state plus the Starlette app that serves it."""

from __future__ import annotations

from starlette.applications import Starlette

from wacloud.testing.fake_provider.control_routes import control_routes
from wacloud.testing.fake_provider.media_routes import media_routes
from wacloud.testing.fake_provider.recording import RecordingMiddleware
from wacloud.testing.fake_provider.send_control_routes import send_control_routes
from wacloud.testing.fake_provider.send_routes import (
    health_routes,
    meta_phone_number,
    send_routes,
)
from wacloud.testing.fake_provider.send_state import SendState
from wacloud.testing.fake_provider.state import DEFAULT_TOKEN, DEFAULT_URL_TTL, ProviderState
from wacloud.testing.fake_provider.state import token_fingerprint as _fingerprint
from wacloud.testing.fake_provider.whapi_routes import whapi_routes


class FakeProvider(ProviderState, SendState):
    """Fake Meta Graph / Whapi / Chakra provider.

    Helpers (safe to call from the test thread while a server is running):

    - inbound media: `add_media`, `fail_media`, `set_token`, `url_ttl` (seconds a resolved
      Meta URL stays valid), `requests` (recorded `RecordedRequest`s);
    - outbound: `sent` (recorded `SentMessage`s), `sent_to`, `sent_ids`,
      `max_rate_per_sender`, `max_rate_per_recipient`, `duplicates`, `script` (scripted
      errors / delays), `add_file` (served at `/files/{name}`), `set_whapi_channel`,
      `set_sender_token`, `set_whapi_status`;
    - token checks: Meta `GET /{version}/{phone_number_id}?fields=...`, Whapi `GET /health`,
      Chakra `GET /v1/health`;
    - `reset()` clears both sides.

    `app` is the ASGI app, usable through `FakeProviderServer` or in-process with
    `httpx.ASGITransport`.
    """

    def __init__(self, *, token: str = DEFAULT_TOKEN, url_ttl: float = DEFAULT_URL_TTL) -> None:
        ProviderState.__init__(self, token=token, url_ttl=url_ttl)
        SendState.__init__(self)
        app = Starlette(
            # Order matters: the Meta resolve pattern `/{version}/{media_id}` comes last.
            routes=[
                *control_routes(self),
                *send_control_routes(self),
                *send_routes(self, self),
                *whapi_routes(self, self),
                *health_routes(self, self),
                *media_routes(self, meta_phone_number(self, self)),
            ],
        )
        app.add_middleware(RecordingMiddleware, state=self)
        self.app: Starlette = app

    def reset(self) -> None:
        """Forget media, requests, sends, scripts, files, channels; restore token and TTL."""
        ProviderState.reset(self)
        self.reset_sends()

    @staticmethod
    def fingerprint(token: str) -> str:
        """The value `RecordedRequest.token_fingerprint` holds for requests bearing `token`,
        and the Whapi sender id of `token` when no channel id was set for it."""
        return _fingerprint(token)
