"""Bad submissions to the tenant API's validation: valid messages of every type, mutated, and
any JSON. `parse_submission` and `parse_validity` answer with a Submission (or an expiry) that
every later step can store, or with InvalidMessage saying what to fix; nothing else. Through
the real API (Starlette, a real SQLite registry and tenant database) no body gets a 5xx: every
refusal is a 4xx with a JSON `error`."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from starlette.applications import Starlette

from tests.fuzzing import json_values, mutated, to_body
from tests.unit.hosting.test_api import serve
from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.registry.api_keys import create_api_key
from wacloud.adapters.db.registry.store import Registry
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import Provider
from wacloud.domain.submission import (
    MAX_TTL_S,
    TYPES,
    InvalidMessage,
    Submission,
    parse_submission,
    parse_validity,
)
from wacloud.hosting.api import api_routes
from wacloud.security.crypto import SecretBox, new_key

CHANNEL = "106540352242922"
NOW = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
VALID = [
    {"channel": CHANNEL, "to": "5511987654321", "type": "text",
     "text": {"body": "Oi", "preview_url": False}, "client_reference": "ref-1"},
    {"channel": CHANNEL, "recipient": "BR.1502576394655843", "type": "image",
     "image": {"link": "https://cdn.example.com/p.jpg", "caption": "x"}, "ttl_s": 300},
    {"channel": CHANNEL, "to": "5511987654321", "type": "document",
     "document": {"id": "1038542891735201", "filename": "a.pdf"},
     "expires_at": "2026-12-06T10:00:00Z"},
    {"channel": CHANNEL, "to": "5511987654321", "type": "location",
     "location": {"latitude": -23.56, "longitude": -46.65, "name": "Loja"},
     "context": {"message_id": "wamid.X"}},
    {"channel": CHANNEL, "to": "5511987654321", "type": "template",
     "template": {"name": "hello", "language": {"code": "pt_BR"}, "components": []},
     "expires_at": 1796551200},
    {"channel": CHANNEL, "to": "5511987654321", "type": "reaction",
     "reaction": {"message_id": "wamid.X", "emoji": "👍"}, "reply_to": "wamid.Y"},
    {"channel": CHANNEL, "to": "5511987654321", "type": "contacts",
     "contacts": [{"name": {"formatted_name": "Ana"}}]},
    {"channel": CHANNEL, "type": "read", "read": {"message_id": "wamid.X"}},
    {"channel": CHANNEL, "to": "Y2FwaV9ncm91cDo1NTEx", "recipient_type": "group",
     "type": "interactive", "interactive": {"type": "button", "body": {"text": "?"}}},
]
submissions = mutated(VALID) | json_values


def as_the_api_reads(document: Any) -> Any:
    """`document` through JSON text and back, as a client's body arrives."""
    return json.loads(to_body(document))


def check_submission(submission: Submission) -> None:
    assert isinstance(submission.channel, str) and submission.channel
    assert isinstance(submission.to, str)
    assert submission.type in TYPES and isinstance(submission.content, dict)
    assert submission.reply_to is None or isinstance(submission.reply_to, str)
    assert submission.client_reference is None or isinstance(submission.client_reference, str)
    assert submission.recipient_type in (None, "group")
    json.dumps([submission.channel, submission.to, submission.content, submission.reply_to,
                submission.client_reference], allow_nan=False).encode("utf-8")


@given(document=submissions)
@example(document={**VALID[0], "text": {"body": "\ud800"}}).via("regression")
@example(document={**VALID[3], "location": {"latitude": float("nan"), "longitude": 1}}).via(
    "regression")
@example(document={**VALID[1], "image": {"link": {"url": "x"}}}).via("regression")
@example(document={**VALID[7], "to": {"a": 1}}).via("regression")
def test_parse_submission_accepts_storable_or_says_why(document: Any) -> None:
    try:
        data = as_the_api_reads(document)
    except RecursionError:
        return  # nesting no JSON reader takes: the API's own test below sends it
    try:
        submission = parse_submission(data)
    except InvalidMessage as exc:
        assert str(exc)
        return
    check_submission(submission)


validity_values = st.one_of(json_values, st.sampled_from([
    "2026-12-06T10:00:00Z", "2026-12-06T10:00:00", "9999-12-31T23:59:59-05:00",
    "0001-01-01T00:00:00+05:00", "2026-13-01", "", " ", "\x00", 10**400, -(10**400),
    1.5e308, float("nan"), float("inf"), True]))


@given(ttl=validity_values, at=validity_values, which=st.sampled_from(["ttl", "at", "both"]))
@example(ttl=10**400, at=None, which="ttl").via("regression")
@example(ttl=None, at=10**400, which="at").via("regression")
@example(ttl=1e-300, at=None, which="ttl").via("regression")  # rounds to no time at all
@example(ttl=None, at="9999-12-31T23:59:59-05:00", which="at").via("regression")
@example(ttl=None, at="0001-01-01T00:00:00+05:00", which="at").via("regression")
def test_parse_validity_gives_a_time_within_30_days_or_says_why(ttl: Any, at: Any,
                                                                 which: str) -> None:
    data = {"ttl_s": ttl} if which == "ttl" else {"expires_at": at} if which == "at" else {
        "ttl_s": ttl, "expires_at": at}
    try:
        expires = parse_validity(data, NOW)
    except InvalidMessage as exc:
        assert str(exc)
        return
    assert expires is None or NOW < expires <= NOW + timedelta(seconds=MAX_TTL_S)


@pytest.fixture(scope="module")
def api() -> Iterator[tuple[httpx.Client, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        registry = Registry(create_engine(f"sqlite:///{root / 'registry.db'}"),
                            SecretBox([new_key()]))
        registry.create_schema()
        registry.add_tenant("acme")
        registry.add_channel(tenant="acme", provider=Provider.META, key=CHANNEL,
                             phone_number_id=CHANNEL, waba_id="W", token="tok")
        key = create_api_key(registry, tenant="acme")[1]
        broker = CredentialsBroker(registry, tenants_dir=root / "tenants")
        app = Starlette(routes=api_routes(broker, lambda tenant: None, max_body_bytes=256 * 1024))
        try:
            with serve(app) as base_url, httpx.Client(base_url=base_url, timeout=10) as client:
                yield client, key
        finally:
            broker.close()
            registry.engine.dispose()


@given(document=submissions, damage=st.sampled_from([b"", b"\xff", b"\\ud800", b"NaN"]))
@example(document={**VALID[0], "ttl_s": 10**400}, damage=b"").via("regression")
@example(document={**VALID[0], "expires_at": "9999-12-31T23:59:59-05:00"}, damage=b"").via(
    "regression")
def test_the_api_answers_every_body_with_201_or_a_json_4xx(api: tuple[httpx.Client, str],
                                                        document: Any, damage: bytes) -> None:
    client, key = api
    body = to_body(document)
    if damage:
        body = body[:len(body) // 2] + damage + body[len(body) // 2:]
    answer = client.post("/v1/messages", content=body,
                         headers={"Authorization": f"Bearer {key}",
                                  "Content-Type": "application/json"})
    assert answer.status_code in (201, 400, 404, 413, 422), answer.text
    if answer.status_code != 201:
        assert answer.json()["error"]
