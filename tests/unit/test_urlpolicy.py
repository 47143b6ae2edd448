"""wacloud.urlpolicy.check_url: which media URLs may be fetched (SSRF guard)."""

from __future__ import annotations

import pytest

from wacloud.model import Channel, Provider
from wacloud.urlpolicy import UrlRefused, check_url


def channel(provider: Provider = Provider.META, api_base_url: str | None = None) -> Channel:
    return Channel(id=1, tenant="acme", provider=provider, key="106540352242922",
                   api_base_url=api_base_url, token="tok-SECRET")


async def test_plain_http_is_refused_without_allow_local() -> None:
    with pytest.raises(UrlRefused, match="https only"):
        await check_url("http://graph.facebook.com/v23.0/1", channel(), allow_local=False)


async def test_plain_http_is_allowed_with_allow_local() -> None:
    await check_url("http://graph.facebook.com/v23.0/1", channel(), allow_local=True)


@pytest.mark.parametrize("url", ["ftp://graph.facebook.com/x", "file:///etc/passwd",
                                 "gopher://graph.facebook.com/x"])
@pytest.mark.parametrize("allow_local", [False, True])
async def test_other_schemes_are_refused_always(url: str, allow_local: bool) -> None:
    with pytest.raises(UrlRefused, match="scheme"):
        await check_url(url, channel(), allow_local=allow_local)


async def test_url_without_host_is_refused() -> None:
    with pytest.raises(UrlRefused, match="no host"):
        await check_url("https:///v23.0/1", channel(), allow_local=True)


@pytest.mark.parametrize(("provider", "url"), [
    (Provider.META, "https://graph.facebook.com/v23.0/1"),
    (Provider.META, "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1"),
    (Provider.META, "https://scontent.xx.fbcdn.net/v/t61/1.jpg"),
    (Provider.META, "https://mmg.whatsapp.net/d/f/1.enc"),
    (Provider.WHAPI, "https://gate.whapi.cloud/media/1"),
    (Provider.WHAPI, "https://s3.eu.whapi.cloud/files/1.jpg"),
    (Provider.CHAKRA, "https://api.chakrahq.com/v1/whatsapp/v19.0/media/1/show"),
])
async def test_provider_hosts_are_allowed(provider: Provider, url: str) -> None:
    # allow_local skips DNS; the host allow-list is checked either way.
    await check_url(url, channel(provider), allow_local=True)


async def test_the_channels_own_api_host_is_allowed() -> None:
    proxied = channel(Provider.WHAPI, "https://whatsapp-proxy.example.org/")

    await check_url("https://whatsapp-proxy.example.org/media/1", proxied, allow_local=True)


@pytest.mark.parametrize(("provider", "url"), [
    (Provider.META, "https://evil.example.com/1.jpg"),
    (Provider.META, "https://graph.facebook.com.evil.example/1"),
    (Provider.META, "https://fbcdn.net.evil.example/1"),
    (Provider.META, "https://evilwhatsapp.net/1"),
    (Provider.META, "https://gate.whapi.cloud/media/1"),  # another provider's host
    (Provider.WHAPI, "https://graph.facebook.com/v23.0/1"),
    (Provider.CHAKRA, "https://chakrahq.com.evil.example/1"),
])
@pytest.mark.parametrize("allow_local", [False, True])
async def test_other_hosts_are_refused(provider: Provider, url: str, allow_local: bool) -> None:
    with pytest.raises(UrlRefused, match="not a"):
        await check_url(url, channel(provider), allow_local=allow_local)


async def test_refusal_message_does_not_contain_query_secrets() -> None:
    with pytest.raises(UrlRefused) as caught:
        await check_url("https://evil.example.com/x?access_token=tok-SECRET", channel(),
                        allow_local=False)

    assert "tok-SECRET" not in str(caught.value)


async def test_host_resolving_to_loopback_is_refused_as_non_public() -> None:
    local = channel(Provider.META, "https://localhost:1")

    with pytest.raises(UrlRefused, match="non-public"):
        await check_url("https://localhost:1/v23.0/1", local, allow_local=False)


@pytest.mark.parametrize("base", ["https://127.0.0.1:8443", "https://10.1.2.3",
                                  "https://169.254.169.254", "https://[::1]:8443"])
async def test_private_and_loopback_addresses_are_refused(base: str) -> None:
    with pytest.raises(UrlRefused, match="non-public"):
        await check_url(f"{base}/media/1", channel(Provider.META, base), allow_local=False)


async def test_loopback_is_allowed_with_allow_local() -> None:
    local = channel(Provider.META, "http://localhost:1")

    await check_url("http://localhost:1/v23.0/1", local, allow_local=True)
