"""`FakeProvider`: the state plus the Starlette app that serves it."""

from __future__ import annotations

from starlette.applications import Starlette

from wacloud.testing.fake_provider.control_routes import control_routes
from wacloud.testing.fake_provider.media_routes import media_routes
from wacloud.testing.fake_provider.recording import RecordingMiddleware
from wacloud.testing.fake_provider.send_routes import send_routes
from wacloud.testing.fake_provider.state import DEFAULT_TOKEN, DEFAULT_URL_TTL, ProviderState
from wacloud.testing.fake_provider.state import token_fingerprint as _fingerprint


class FakeProvider(ProviderState):
    """Fake Meta Graph / Whapi / Chakra provider.

    Helpers (safe to call from the test thread while a server is running): `add_media`,
    `fail_media`, `set_token`, `url_ttl` (seconds a resolved Meta URL stays valid),
    `requests` (recorded `RecordedRequest`s) and `reset()`. `app` is the ASGI app, usable
    through `FakeProviderServer` or in-process with `httpx.ASGITransport`.
    """

    def __init__(self, *, token: str = DEFAULT_TOKEN, url_ttl: float = DEFAULT_URL_TTL) -> None:
        super().__init__(token=token, url_ttl=url_ttl)
        app = Starlette(
            # Order matters: the Meta resolve pattern `/{version}/{media_id}` comes last.
            routes=[*control_routes(self), *send_routes(self), *media_routes(self)],
        )
        app.add_middleware(RecordingMiddleware, state=self)
        self.app: Starlette = app

    @staticmethod
    def fingerprint(token: str) -> str:
        """The value `RecordedRequest.token_fingerprint` holds for requests bearing `token`."""
        return _fingerprint(token)
