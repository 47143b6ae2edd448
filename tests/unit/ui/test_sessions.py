"""Dashboard sessions (`wacloud.ui.sessions`): expiry, the cap on their number, and the
same-origin check every form post must pass."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from wacloud.ui.sessions import SessionStore, csrf_ok, is_https, same_origin


def request(headers: dict[str, str], scheme: str = "http") -> Request:
    return Request({"type": "http", "method": "POST", "path": "/ui/logout", "scheme": scheme,
                    "server": ("127.0.0.1", 8080), "query_string": b"",
                    "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]})


def test_sessions_end_when_idle_too_long_or_too_old() -> None:
    clock = [1000.0]
    store = SessionStore(idle_s=60, max_age_s=300, clock=lambda: clock[0])
    session = store.create("hash", 1, None)
    assert store.get(session.sid) is session
    clock[0] += 59
    assert store.get(session.sid) is session  # a request keeps it alive ...
    clock[0] += 61
    assert store.get(session.sid) is None  # ... a minute of nothing does not
    other = store.create("hash", 1, "acme")
    for _ in range(6):
        clock[0] += 55
        found = store.get(other.sid)
    assert found is None  # used all along, but older than max_age_s
    assert store.get("") is None and store.get(None) is None and len(store) == 0


def test_every_login_gets_a_new_id_and_the_oldest_go_beyond_the_cap() -> None:
    store = SessionStore(max_sessions=3)
    made = [store.create("hash", 1, None) for _ in range(5)]
    assert len({s.sid for s in made}) == 5 and len({s.csrf for s in made}) == 5
    assert [store.get(s.sid) is not None for s in made] == [False, False, True, True, True]
    store.drop(made[-1].sid)
    assert store.get(made[-1].sid) is None


@pytest.mark.parametrize(("headers", "allowed"), [
    ({"host": "gw.example:8080", "origin": "http://gw.example:8080"}, True),
    ({"host": "gw.example:8080", "origin": "https://gw.example:8080"}, True),
    ({"host": "gw.example:8080", "referer": "http://gw.example:8080/ui/parked"}, True),
    ({"host": "gw.example", "x-forwarded-host": "dash.example",
      "origin": "https://dash.example"}, True),
    ({"host": "gw.example:8080", "origin": "https://evil.example"}, False),
    ({"host": "gw.example:8080", "origin": "http://gw.example:8080.evil.example"}, False),
    ({"host": "gw.example:8080", "origin": "null", "referer": "https://evil.example/"}, False),
    ({"host": "gw.example:8080", "origin": "null"}, False),
    ({"host": "gw.example:8080"}, False),
    ({"host": "gw.example:8080", "referer": "javascript://gw.example:8080/"}, False),
])
def test_forms_must_come_from_this_origin(headers: dict[str, str], allowed: bool) -> None:
    assert same_origin(request(headers)) is allowed


def test_csrf_tokens_and_https() -> None:
    session = SessionStore().create("hash", 1, None)
    assert csrf_ok(session, session.csrf)
    assert not csrf_ok(session, None) and not csrf_ok(session, "") and not csrf_ok(
        session, session.csrf + "x")
    assert is_https(request({}, scheme="https"))
    assert is_https(request({"x-forwarded-proto": "https"}))
    assert not is_https(request({"x-forwarded-proto": "http"}))
