"""Bad input to the provider parsers, as the receive stage calls them: whatever the body, the
answer is a list of events that can cross a queue and come back, or a PayloadError saying
why (the stage parks the body with that reason). Nothing else may escape."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given

from tests.fuzzing import bodies, fixtures
from wacloud.domain.model import PayloadError, event_from_dict
from wacloud.stages.envelopes import RawWebhook, dumps
from wacloud.stages.receive import parse

ROUTES = {"meta": None, "whapi": "MANTIS-M72HC", "chakra": "plugin-fuzz"}
DOCUMENTS = {provider: fixtures(provider) for provider in ROUTES}
# Found by these tests: a key that is a surrogate written as UTF-8 bytes (json.loads(bytes)
# decodes with "surrogatepass"), and nesting deeper than dataclasses.asdict recurses.
SURROGATE_KEY = b'{"\xed\xa0\x80":"","":[{"":"","":[{"":"","":{"":"","":""}}]}]}'
DEEP_VALUE = (b'{"channel_id":"MANTIS-M72HC","messages":[{"id":"m","type":"text","text":'
              + b"[" * 990 + b"]" * 990 + b"}]}")


def check(provider: str, body: bytes) -> None:
    raw = RawWebhook(provider, ROUTES[provider], 1.0, body)
    try:
        events = parse(raw)
    except PayloadError as exc:
        assert str(exc)
        return
    for event in events:
        # What the receive stage puts on `inbound.events` and the write stage reads back.
        text = dumps(event.to_dict())
        assert event_from_dict(json.loads(text)) == event_from_dict(event.to_dict())


# Each parser also gets the other's shapes: a webhook sent to the wrong URL.
@pytest.mark.parametrize("provider", list(ROUTES))
@given(data=bodies(DOCUMENTS["meta"] + DOCUMENTS["chakra"]))
@example(data=SURROGATE_KEY).via("regression")
def test_meta_shaped_bodies_parse_or_say_why(provider: str, data: bytes) -> None:
    check(provider, data)


@pytest.mark.parametrize("provider", list(ROUTES))
@given(data=bodies(DOCUMENTS["whapi"]))
@example(data=DEEP_VALUE).via("regression")
def test_whapi_shaped_bodies_parse_or_say_why(provider: str, data: bytes) -> None:
    check(provider, data)
