"""The value checks shared by the command line and the admin API: each refusal names the rule;
what passes comes back as it is stored."""

from __future__ import annotations

import pytest

from wacloud.domain import validation
from wacloud.domain.model import Provider
from wacloud.domain.validation import InvalidValue


@pytest.mark.parametrize("slug", ["acme", "a", "acme-br_2", "0day", "a" * 63])
def test_good_slugs(slug: str) -> None:
    assert validation.slug(slug) == slug


@pytest.mark.parametrize("slug", ["", "Acme", "Bad Slug!", "-acme", "_x", "a/b", "../x",
                                  "a.b", "a" * 64, "acme\n"])
def test_bad_slugs_name_the_rule(slug: str) -> None:
    with pytest.raises(InvalidValue, match="lower-case letters, digits"):
        validation.slug(slug)


def test_provider_keys() -> None:
    assert validation.provider_key(Provider.META, " 106540352242922 ") == "106540352242922"
    assert validation.provider_key(Provider.WHAPI, "MANTIS-M72HC") == "MANTIS-M72HC"
    uuid = "7b1c0b8e-4f5a-4c1e-9a8e-2d3c4b5a6f70"
    assert validation.provider_key(Provider.CHAKRA, uuid) == uuid
    for provider, bad in [(Provider.META, "1065 4035"), (Provider.META, "abc"),
                          (Provider.WHAPI, "a/b"), (Provider.CHAKRA, "x" * 129),
                          (Provider.WHAPI, "")]:
        with pytest.raises(InvalidValue):
            validation.provider_key(provider, bad)


@pytest.mark.parametrize(("url", "allow_http", "expected"), [
    ("https://graph.facebook.com/", False, "https://graph.facebook.com"),
    ("https://proxy.example.com:8443/graph", False, "https://proxy.example.com:8443/graph"),
    ("http://127.0.0.1:9999", True, "http://127.0.0.1:9999"),
    ("https://[::1]:8443", False, "https://[::1]:8443"),
])
def test_good_api_base_urls(url: str, allow_http: bool, expected: str) -> None:
    assert validation.api_base_url(url, allow_http=allow_http) == expected


@pytest.mark.parametrize(("url", "why"), [
    ("http://[::1", "Invalid IPv6 URL"),
    ("http://graph.example.com", "scheme 'http'"),
    ("ftp://graph.example.com", "scheme 'ftp'"),
    ("graph.facebook.com", "scheme 'missing'"),
    ("https://", "no host"),
    ("https://host:99999", "out of range"),
    ("https://user:pw@host", "no user or password"),
    ("https://host/?token=x", "no query"),
])
def test_bad_api_base_urls(url: str, why: str) -> None:
    with pytest.raises(InvalidValue, match="invalid API base URL") as caught:
        validation.api_base_url(url)
    assert why in str(caught.value)
    assert "pw" not in str(caught.value)


def test_db_urls() -> None:
    assert validation.db_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    url = "postgresql+psycopg://u:secret@db.example/acme"
    assert validation.db_url(url) == url
    for bad, why in [("nope", "not a SQLAlchemy URL"), ("oracle://u:secret@h/d", "unsupported"),
                     ("postgresql+psycopg://u:secret@/acme", "no host"),
                     ("postgresql+psycopg://u:secret@h", "no database"),
                     ("postgresql+nosuchdriver://u:secret@h/d", "not installed"),
                     ("sqlite://", "no database")]:
        with pytest.raises(InvalidValue, match=why) as caught:
            validation.db_url(bad)
        assert "secret" not in str(caught.value)
    assert validation.masked_db_url(url) == "postgresql+psycopg://u:***@db.example/acme"


def test_other_channel_fields() -> None:
    assert validation.display_number("+55 (11) 94000-1234") == "5511940001234"
    assert validation.graph_version("v23.0") == "v23.0"
    assert validation.media_hosts(["CDN.example.com"]) == ("cdn.example.com",)
    for call in (lambda: validation.display_number("call me"),
                 lambda: validation.graph_version("23"), lambda: validation.mps(0),
                 lambda: validation.media_hosts(["https://x/"])):
        with pytest.raises(InvalidValue):
            call()
