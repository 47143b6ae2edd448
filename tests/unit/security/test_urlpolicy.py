"""wacloud.security.urlpolicy: which media URLs may be fetched (the SSRF guard).

DNS is not what these tests are about, so hosts resolve through an injected table; an address
literal in a URL is never resolved at all.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

import pytest

from wacloud.domain.model import Channel, Provider
from wacloud.security.urlpolicy import (
    HostAllowList,
    UrlPolicy,
    UrlRefused,
    address_problem,
    check_public_url,
    check_url,
    normalize_media_hosts,
)

PUBLIC = "157.240.1.1"  # an address is_global says is public
SECRET = "tok-SECRET-9f2c"


class FakeDns:
    """host -> addresses; unknown hosts fail like a real NXDOMAIN."""

    def __init__(self, table: dict[str, Sequence[str]] | None = None) -> None:
        self.table = dict(table or {})
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append((host, port))
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[host]


def public_dns(*hosts: str) -> FakeDns:
    return FakeDns({host: [PUBLIC] for host in hosts})


def channel(provider: Provider = Provider.META, api_base_url: str | None = None,
            media_hosts: tuple[str, ...] = ()) -> Channel:
    return Channel(id=1, tenant="acme", provider=provider, key="106540352242922",
                   api_base_url=api_base_url, token=SECRET, media_hosts=media_hosts)


def policy(dns: FakeDns | None = None, *, allow_local: bool = False,
           local_origins: frozenset[str] = frozenset()) -> UrlPolicy:
    return UrlPolicy(allow_local=allow_local, local_origins=local_origins,
                     resolver=dns or FakeDns())


async def check(url: str, ch: Channel | None = None, dns: FakeDns | None = None, *,
                allow_local: bool = False, local_origins: frozenset[str] = frozenset()) -> None:
    allowed = HostAllowList.for_channel(ch or channel())
    await policy(dns, allow_local=allow_local, local_origins=local_origins).check(url, allowed)


# -- scheme, host, credentials --------------------------------------------------------------


async def test_plain_http_is_refused_without_allow_local() -> None:
    with pytest.raises(UrlRefused, match="https only"):
        await check("http://graph.facebook.com/v23.0/1", dns=public_dns("graph.facebook.com"))


async def test_plain_http_is_allowed_with_allow_local() -> None:
    await check("http://graph.facebook.com/v23.0/1", dns=public_dns("graph.facebook.com"),
                allow_local=True)


@pytest.mark.parametrize("url", ["ftp://graph.facebook.com/x", "file:///etc/passwd",
                                 "gopher://graph.facebook.com/x", "graph.facebook.com/x"])
@pytest.mark.parametrize("allow_local", [False, True])
async def test_other_schemes_are_refused_always(url: str, allow_local: bool) -> None:
    with pytest.raises(UrlRefused, match="scheme"):
        await check(url, allow_local=allow_local)


async def test_url_without_host_is_refused() -> None:
    with pytest.raises(UrlRefused, match="no host"):
        await check("https:///v23.0/1", allow_local=True)


@pytest.mark.parametrize("url", [f"https://user:{SECRET}@graph.facebook.com/1",
                                 f"https://{SECRET}@graph.facebook.com/1"])
async def test_credentials_in_the_url_are_refused_and_not_repeated(url: str) -> None:
    with pytest.raises(UrlRefused, match="credentials") as caught:
        await check(url, dns=public_dns("graph.facebook.com"))

    assert SECRET not in str(caught.value)


async def test_malformed_port_is_refused() -> None:
    with pytest.raises(UrlRefused, match="port"):
        await check("https://graph.facebook.com:99999/1")


# -- host allow list ------------------------------------------------------------------------


@pytest.mark.parametrize(("provider", "url"), [
    (Provider.META, "https://graph.facebook.com/v23.0/1"),
    (Provider.META, "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1"),
    (Provider.META, "https://scontent.xx.fbcdn.net/v/t61/1.jpg"),
    (Provider.META, "https://mmg.whatsapp.net/d/f/1.enc"),
    (Provider.META, "https://GRAPH.facebook.com./v23.0/1"),  # case and trailing dot
    (Provider.WHAPI, "https://gate.whapi.cloud/media/1"),
    (Provider.WHAPI, "https://s3.eu.whapi.cloud/files/1.jpg"),
    (Provider.CHAKRA, "https://api.chakrahq.com/v1/whatsapp/v19.0/media/1/show"),
])
async def test_provider_hosts_are_allowed(provider: Provider, url: str) -> None:
    hosts = ("graph.facebook.com", "lookaside.fbsbx.com", "scontent.xx.fbcdn.net",
             "mmg.whatsapp.net", "gate.whapi.cloud", "s3.eu.whapi.cloud", "api.chakrahq.com")
    await check(url, channel(provider), public_dns(*hosts))


async def test_provider_hosts_only_on_the_default_port() -> None:
    with pytest.raises(UrlRefused, match="not a meta host"):
        await check("https://graph.facebook.com:8443/v23.0/1", dns=public_dns(
            "graph.facebook.com"))


async def test_the_channels_own_api_origin_is_allowed_with_its_port() -> None:
    proxied = channel(Provider.WHAPI, "https://whatsapp-proxy.example.org:8443/")
    dns = public_dns("whatsapp-proxy.example.org")

    await check("https://whatsapp-proxy.example.org:8443/media/1", proxied, dns)
    with pytest.raises(UrlRefused, match="not a whapi host"):
        await check("https://whatsapp-proxy.example.org:9000/media/1", proxied, dns)


@pytest.mark.parametrize(("provider", "url"), [
    (Provider.META, "https://evil.example.com/1.jpg"),
    (Provider.META, "https://graph.facebook.com.evil.example/1"),
    (Provider.META, "https://fbcdn.net.evil.example/1"),
    (Provider.META, "https://evilwhatsapp.net/1"),
    (Provider.META, "https://gate.whapi.cloud/media/1"),  # another provider's host
    (Provider.WHAPI, "https://graph.facebook.com/v23.0/1"),
    (Provider.CHAKRA, "https://chakrahq.com.evil.example/1"),
    (Provider.META, "https://169.254.169.254/latest/meta-data/"),
    (Provider.WHAPI, "https://10.0.0.5/media/1"),
])
@pytest.mark.parametrize("allow_local", [False, True])
async def test_other_hosts_are_refused_before_any_dns(provider: Provider, url: str,
                                                      allow_local: bool) -> None:
    dns = FakeDns()
    with pytest.raises(UrlRefused, match="not a"):
        await check(url, channel(provider), dns, allow_local=allow_local)

    assert dns.asked == []


async def test_channel_media_hosts_extend_the_allow_list_for_that_channel_only() -> None:
    extra = channel(Provider.WHAPI, media_hosts=normalize_media_hosts(
        ["media.tenant-cdn.example", ".files.example.net", "cdn.example.org:8443"]))
    dns = public_dns("media.tenant-cdn.example", "a.b.files.example.net", "cdn.example.org",
                     "files.example.net")

    await check("https://media.tenant-cdn.example/1.jpg", extra, dns)
    await check("https://a.b.files.example.net/1.jpg", extra, dns)
    await check("https://cdn.example.org:8443/1.jpg", extra, dns)
    for refused in ("https://files.example.net/1.jpg",  # ".domain" means subdomains only
                    "https://cdn.example.org/1.jpg",  # listed with another port
                    "https://media.tenant-cdn.example:444/1.jpg"):
        with pytest.raises(UrlRefused, match="not a whapi host"):
            await check(refused, extra, dns)
    with pytest.raises(UrlRefused, match="not a whapi host"):
        await check("https://media.tenant-cdn.example/1.jpg", channel(Provider.WHAPI), dns)


async def test_refusal_message_does_not_contain_path_or_query_secrets() -> None:
    with pytest.raises(UrlRefused) as caught:
        await check(f"https://evil.example.com/{SECRET}?access_token={SECRET}")

    assert SECRET not in str(caught.value)
    assert "evil.example.com" in str(caught.value)


# -- addresses after DNS resolution ---------------------------------------------------------


@pytest.mark.parametrize(("address", "kind"), [
    ("127.0.0.1", "loopback"),
    ("::1", "loopback"),
    ("10.0.0.5", "private"),
    ("172.16.3.4", "private"),
    ("192.168.1.10", "private"),
    ("fc00::1", "private"),
    ("169.254.169.254", "link-local"),
    ("fe80::1", "link-local"),
    ("::ffff:169.254.169.254", "link-local"),  # IPv4-mapped
    ("::ffff:10.0.0.5", "private"),
    ("2002:a9fe:a9fe::1", "link-local"),  # 6to4 around 169.254.169.254
    ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("240.0.0.1", "reserved"),
    ("100.64.0.1", "not globally routable"),
])
async def test_host_resolving_to_a_non_public_address_is_refused(address: str,
                                                                 kind: str) -> None:
    dns = FakeDns({"lookaside.fbsbx.com": [address]})

    with pytest.raises(UrlRefused, match="non-public") as caught:
        await check("https://lookaside.fbsbx.com/x", dns=dns)

    assert kind in str(caught.value)
    assert caught.value.temporary is False


async def test_one_bad_address_among_good_ones_is_enough_to_refuse() -> None:
    dns = FakeDns({"lookaside.fbsbx.com": [PUBLIC, "10.0.0.5"]})

    with pytest.raises(UrlRefused, match="non-public"):
        await check("https://lookaside.fbsbx.com/x", dns=dns)


@pytest.mark.parametrize("base", ["https://127.0.0.1:8443", "https://10.1.2.3",
                                  "https://169.254.169.254", "https://[::1]:8443"])
async def test_address_literals_are_refused_without_dns(base: str) -> None:
    dns = FakeDns()
    with pytest.raises(UrlRefused, match="non-public"):
        await check(f"{base}/media/1", channel(Provider.META, base), dns)

    assert dns.asked == []


async def test_unresolvable_host_is_a_temporary_refusal() -> None:
    with pytest.raises(UrlRefused, match="does not resolve") as caught:
        await check("https://lookaside.fbsbx.com/x", dns=FakeDns())

    assert caught.value.temporary is True


async def test_public_host_passes_and_the_target_holds_the_checked_addresses() -> None:
    dns = FakeDns({"lookaside.fbsbx.com": [PUBLIC, "2a03:2880:f003:c07:face:b00c::2"]})

    target = await policy(dns).check("https://lookaside.fbsbx.com/x?mid=1",
                                     HostAllowList.for_channel(channel()))

    assert target.addresses == (ipaddress.ip_address(PUBLIC),
                                ipaddress.ip_address("2a03:2880:f003:c07:face:b00c::2"))
    assert (target.scheme, target.host, target.port) == ("https", "lookaside.fbsbx.com", 443)


# -- the development allowance ----------------------------------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "10.0.0.5", "192.168.1.10"])
async def test_allow_local_permits_loopback_and_private(address: str) -> None:
    dns = FakeDns({"localhost": [address]})

    await check("http://localhost:1/v23.0/1", channel(Provider.META, "http://localhost:1"), dns,
                allow_local=True)


@pytest.mark.parametrize("address", ["169.254.169.254", "fe80::1", "224.0.0.1", "0.0.0.0",
                                     "::ffff:169.254.169.254"])
async def test_allow_local_still_refuses_metadata_multicast_and_unspecified(address: str
                                                                             ) -> None:
    dns = FakeDns({"lookaside.fbsbx.com": [address]})

    with pytest.raises(UrlRefused, match="non-public"):
        await check("https://lookaside.fbsbx.com/x", dns=dns, allow_local=True)


async def test_local_origins_allow_only_that_origin() -> None:
    fake = "http://127.0.0.1:8001"
    ch = channel(Provider.WHAPI, fake, media_hosts=("127.0.0.1:8002",))
    origins = frozenset({fake})

    await check(f"{fake}/media/1", ch, local_origins=origins)
    with pytest.raises(UrlRefused, match="https only"):
        await check("http://127.0.0.1:8002/media/1", ch, local_origins=origins)
    with pytest.raises(UrlRefused, match="loopback"):
        await check("https://127.0.0.1:8002/media/1", ch, local_origins=origins)


# -- outbound links: any host, public addresses only --------------------------------------------


async def test_public_url_check_allows_any_public_host_over_https() -> None:
    dns = public_dns("cdn.shop.example")

    await check_public_url("https://cdn.shop.example/p.jpg", allow_local=False,
                           policy=policy(dns))
    with pytest.raises(UrlRefused, match="https only"):
        await check_public_url("http://cdn.shop.example/p.jpg", allow_local=False,
                               policy=policy(dns))


@pytest.mark.parametrize("url", ["https://10.0.0.5/p.jpg", "https://169.254.169.254/latest",
                                 "https://[::1]/p.jpg", "https://internal.shop.example/p.jpg"])
async def test_public_url_check_refuses_internal_addresses(url: str) -> None:
    dns = FakeDns({"internal.shop.example": ["192.168.0.7"]})

    with pytest.raises(UrlRefused, match="non-public"):
        await check_public_url(url, allow_local=False, policy=policy(dns))


async def test_check_url_keeps_its_simple_signature() -> None:
    # Callers without a policy get the system resolver; an address literal needs no DNS.
    with pytest.raises(UrlRefused, match="non-public"):
        await check_url("https://10.0.0.5/x", channel(Provider.META, "https://10.0.0.5"),
                        allow_local=False)


# -- pinning the connection to the checked address ----------------------------------------------


async def test_pinned_request_connects_to_the_checked_address_with_the_real_host_name() -> None:
    dns = FakeDns({"lookaside.fbsbx.com": [PUBLIC, "2a03:2880::2"]})
    target = await policy(dns).check("https://lookaside.fbsbx.com/a/b?mid=1&ext=2",
                                     HostAllowList.for_channel(channel()))

    url, headers, tls_host = target.pinned_request(target.addresses[0])
    assert url == f"https://{PUBLIC}:443/a/b?mid=1&ext=2"
    assert headers == {"Host": "lookaside.fbsbx.com"}
    assert tls_host == "lookaside.fbsbx.com"
    url6, _, _ = target.pinned_request(target.addresses[1])
    assert url6 == "https://[2a03:2880::2]:443/a/b?mid=1&ext=2"


async def test_pinned_request_keeps_a_non_default_port_in_host_and_leaves_literals_alone(
        ) -> None:
    proxied = channel(Provider.WHAPI, "https://proxy.example.org:8443")
    dns = public_dns("proxy.example.org")
    target = await policy(dns).check("https://proxy.example.org:8443/m/1",
                                     HostAllowList.for_channel(proxied))
    assert target.pinned_request(target.addresses[0])[1] == {"Host": "proxy.example.org:8443"}

    local = await policy(allow_local=True).check(
        "http://127.0.0.1:9/m", HostAllowList.for_channel(channel(
            Provider.WHAPI, "http://127.0.0.1:9")))
    assert local.pinned_request(local.addresses[0]) == ("http://127.0.0.1:9/m", {}, None)


# -- helpers ------------------------------------------------------------------------------------


def test_normalize_media_hosts_cleans_and_rejects() -> None:
    assert normalize_media_hosts([" CDN.Example.com. ", "cdn.example.com", "", ".files.io",
                                  "h.example:8443"]) == (
        "cdn.example.com", ".files.io", "h.example:8443")
    for bad in ("https://cdn.example.com", "cdn.example.com/path", "*.example.com",
                "h.example:0", "h.example:70000", ".files.io:443", "a b"):
        with pytest.raises(ValueError, match="media host"):
            normalize_media_hosts([bad])


def test_address_problem_is_none_for_public_addresses() -> None:
    for text in (PUBLIC, "8.8.8.8", "2a03:2880:f003:c07:face:b00c::2"):
        assert address_problem(ipaddress.ip_address(text), allow_local=False) is None
