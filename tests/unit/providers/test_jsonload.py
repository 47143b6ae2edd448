"""JSON from the outside world: what Python's json takes but nothing downstream carries is a
PayloadError with the reason (the receive stage parks the body with it)."""

from __future__ import annotations

import pytest

from wacloud.domain.model import PayloadError
from wacloud.providers.jsonload import MAX_DEPTH, load_json
from wacloud.providers.meta.inbound import _maybe_json


@pytest.mark.parametrize(("body", "reason"), [
    (b'{"a": NaN}', "NaN is not a JSON value"),
    (b'{"a": [Infinity]}', "Infinity is not a JSON value"),
    (b'{"a": -Infinity}', "-Infinity is not a JSON value"),
    (b'{"text": "\\ud800"}', "lone surrogate"),
    (b'{"\\uDFFF": 1}', "lone surrogate"),
    (b'{"text": "\xed\xa0\x80"}', "not UTF-8"),  # a surrogate encoded as UTF-8 bytes
    (b"\xff\xfe{\x00}\x00", "not UTF-8"),  # UTF-16: json.loads(bytes) would take it
    (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
    (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "nested deeper"),
    (b'{"n": ' + b"9" * 5000 + b"}", "not usable JSON"),
    (b'{"a": 1', "not JSON"),
])
def test_what_nothing_downstream_carries_is_refused_with_the_reason(body: bytes,
                                                                      reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        load_json(body)


def test_ordinary_bodies_load_as_json_does() -> None:
    nested = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert load_json(b'\xef\xbb\xbf{"a": "Ol\xc3\xa1 \\ud83d\\udc4d"}') == {"a": "Olá 👍"}
    assert load_json(nested) == load_json(nested.decode())
    assert load_json('{"response_json": 1}') == {"response_json": 1}
    assert load_json(b"9" * 4000) == int("9" * 4000)


def test_a_flow_reply_too_deep_to_decode_is_kept_as_its_text() -> None:
    deep = "[" * 5000 + "]" * 5000
    assert _maybe_json(deep) == deep
    assert _maybe_json('{"a": NaN}') == '{"a": NaN}'
    assert _maybe_json('{"a": 1}') == {"a": 1}
