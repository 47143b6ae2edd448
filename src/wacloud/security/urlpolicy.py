"""Which URLs we may fetch media from: the SSRF guard for every media download.

A media link comes from a webhook (inbound) or from a tenant's outbox row (outbound), so an
attacker can choose it. Every URL we fetch, and every redirect hop of it, must pass `UrlPolicy`:

- scheme https (plain http only in development, see below), no credentials in the URL;
- for inbound media, a host allowed for the channel: its own API origin, the provider's media
  hosts (its port's `media_hosts`, default port only) or the channel's own `media_hosts`;
  outbound links a tenant gives us may name any host;
- every address the host resolves to is public: no loopback, private, link-local (cloud
  metadata at 169.254.169.254), multicast, reserved or unspecified address, also not when
  hidden in an IPv4-mapped, 6to4, Teredo or NAT64 IPv6 address.

The check returns a `Target` holding the addresses it approved; `pinned_request` turns it into
a request that connects to exactly that address (TLS still verified against the host name), so
a DNS answer that changes between the check and the connection (DNS rebinding) cannot steer us.
Gaps left on purpose: the Meta Graph media lookup and the provider API calls go to the
channel's API origin from the registry (an operator's setting, not a payload) and are checked
but not pinned; behind an HTTP(S)_PROXY the proxy connects.

`allow_local` is the development setting WACLOUD_DEV_ALLOW_LOCAL_URLS (tests, demo, fake
provider): plain http and loopback/private addresses are allowed, but link-local, multicast,
reserved and unspecified addresses are still refused: no development setup needs the cloud
metadata service. `local_origins` gives the same allowance to named origins only (a test's
fake provider), so tests can exercise refusals of everything else.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit

from wacloud.domain.model import Channel
from wacloud.providers import port as provider_port

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port -> the addresses (as text) a connection could go to. Injectable for tests.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

DEFAULT_PORTS = {"https": 443, "http": 80}
# Redirects we follow (each hop checked again); providers' CDNs use one or two.
MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

_HOST_ENTRY = re.compile(r"^\.?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*"
                         r"(:[0-9]{1,5})?$")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")


class UrlRefused(ValueError):
    """A media URL we will not fetch; the message says why and never includes the URL's path,
    query or credentials (they may hold a token). `temporary` is set when retrying may help
    (the host did not resolve)."""

    def __init__(self, reason: str, *, temporary: bool = False) -> None:
        super().__init__(reason)
        self.temporary = temporary


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def normalize_media_hosts(entries: Iterable[str]) -> tuple[str, ...]:
    """Clean a channel's extra media hosts: `host`, `host:port` or `.domain` (any subdomain).
    Raises ValueError for anything else (a URL, a path, a wildcard)."""
    cleaned: list[str] = []
    for entry in entries:
        value = entry.strip().lower().rstrip(".")
        if not value:
            continue
        if not _HOST_ENTRY.fullmatch(value) or (value.startswith(".") and ":" in value):
            raise ValueError(f"media host {entry!r} is not a host name, host:port or .domain")
        if ":" in value and not 0 < int(value.rsplit(":", 1)[1]) < 65536:
            raise ValueError(f"media host {entry!r} has an invalid port")
        if value not in cleaned:
            cleaned.append(value)
    return tuple(cleaned)


def address_problem(address: IPAddress, *, allow_local: bool) -> str | None:
    """Why we must not connect to `address` (None: fine). The checks run in this order because
    Python's `is_private` also covers link-local and 0.0.0.0/8."""
    embedded = embedded_ipv4(address)
    if embedded is not None:
        return address_problem(embedded, allow_local=allow_local)
    if address.is_unspecified or (address.version == 4 and address in _THIS_NETWORK):
        return "unspecified"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_loopback:
        return None if allow_local else "loopback"
    if address.is_reserved:
        return "reserved"
    if address.is_private:
        return None if allow_local else "private"
    if not address.is_global:  # shared address space (100.64/10) and the like
        return None if allow_local else "not globally routable"
    return None


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address reaches (mapped, 6to4, Teredo client, NAT64)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True, slots=True)
class HostAllowList:
    """The hosts one channel may fetch media from. `(host, port)` pairs must match exactly;
    `patterns` ("name" or ".domain") only on the scheme's default port."""

    label: str
    origins: frozenset[tuple[str, int]] = frozenset()
    patterns: tuple[str, ...] = ()

    @classmethod
    def for_channel(cls, channel: Channel) -> HostAllowList:
        api = urlsplit(channel.base_url)
        origins: set[tuple[str, int]] = set()
        api_host = (api.hostname or "").lower()
        if api_host:
            origins.add((api_host, _port(api)))
        patterns = list(provider_port(channel.provider).media_hosts)
        for entry in channel.media_hosts:
            host, _, port = entry.lower().partition(":")
            if port.isdigit():
                origins.add((host, int(port)))
            else:
                patterns.append(host)
        return cls(channel.provider.value, frozenset(origins), tuple(patterns))

    def permits(self, host: str, port: int, default_port: int) -> bool:
        if (host, port) in self.origins:
            return True
        if port != default_port:
            return False
        for pattern in self.patterns:
            if pattern.startswith(".") and host.endswith(pattern):
                return True
            if host == pattern:
                return True
        return False


@dataclass(frozen=True, slots=True)
class Target:
    """A URL that passed the policy, with the addresses it was checked against."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port

    def pinned_request(self, address: IPAddress) -> tuple[str, dict[str, str], str | None]:
        """(url, extra headers, TLS host name) that connect to `address` (one of the checked
        addresses) while HTTP `Host` and TLS SNI/certificate checks still use the host name."""
        parts = urlsplit(self.url)
        if _is_ip_literal(self.host):
            return self.url, {}, None
        literal = f"[{address}]" if address.version == 6 else str(address)
        pinned = parts._replace(netloc=f"{literal}:{self.port}").geturl()
        default = DEFAULT_PORTS.get(self.scheme)
        host_header = self.host if self.port == default else f"{self.host}:{self.port}"
        return pinned, {"Host": host_header}, self.host if self.scheme == "https" else None


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    allow_local: bool = False
    # "scheme://host:port" origins treated as if allow_local were on (tests' fake provider).
    local_origins: frozenset[str] = frozenset()
    resolver: Resolver = field(default=system_resolver)

    async def check(self, url: str, allowed: HostAllowList | None) -> Target:
        """Refuse (UrlRefused) or return the checked target. `allowed=None`: any host (a
        tenant's outbound link), still only public addresses."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise UrlRefused(f"media URL scheme {scheme!r} refused (https only)")
        host = (parts.hostname or "").lower().rstrip(".")
        if not host:
            raise UrlRefused("media URL has no host")
        if parts.username is not None or parts.password is not None:
            raise UrlRefused(f"media URL for host {host!r} carries credentials; refused")
        try:
            port = _port(parts)
        except ValueError:
            raise UrlRefused(f"media URL for host {host!r} has an invalid port") from None
        if allowed is not None and not allowed.permits(host, port, DEFAULT_PORTS[scheme]):
            shown = host if port == DEFAULT_PORTS[scheme] else f"{host}:{port}"
            raise UrlRefused(f"media host {shown!r} is not a {allowed.label} host allowed for "
                             "this channel")
        local_ok = self.allow_local or f"{scheme}://{host}:{port}" in self.local_origins
        if scheme != "https" and not local_ok:
            raise UrlRefused(f"media URL scheme {scheme!r} refused (https only)")
        addresses = await self._addresses(host, port)
        for address in addresses:
            problem = address_problem(address, allow_local=local_ok)
            if problem is not None:
                raise UrlRefused(f"media host {host!r} resolves to a non-public address "
                                 f"({address}, {problem})")
        return Target(url, scheme, host, port, addresses)

    async def _addresses(self, host: str, port: int) -> tuple[IPAddress, ...]:
        if _is_ip_literal(host):
            return (ipaddress.ip_address(host),)
        try:
            answers = await self.resolver(host, port)
        except OSError:
            raise UrlRefused(f"media host {host!r} does not resolve", temporary=True) from None
        addresses: list[IPAddress] = []
        for answer in answers:
            try:
                addresses.append(ipaddress.ip_address(answer))
            except ValueError:
                raise UrlRefused(f"media host {host!r} resolves to an unusable address"
                                 ) from None
        if not addresses:
            raise UrlRefused(f"media host {host!r} does not resolve", temporary=True)
        return tuple(addresses)


def _port(parts: SplitResult) -> int:
    """The effective port (raises ValueError for a malformed or out-of-range port)."""
    port = parts.port
    return port if port is not None else DEFAULT_PORTS.get(parts.scheme.lower(), 443)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def check_url(url: str, channel: Channel, *, allow_local: bool,
                    policy: UrlPolicy | None = None) -> Target:
    """An inbound media URL of `channel`: the channel's hosts, public addresses."""
    policy = policy or UrlPolicy(allow_local=allow_local)
    return await policy.check(url, HostAllowList.for_channel(channel))


async def check_public_url(url: str, *, allow_local: bool,
                           policy: UrlPolicy | None = None) -> Target:
    """For links a tenant gives us to send (outbound media): https and a public address."""
    policy = policy or UrlPolicy(allow_local=allow_local)
    return await policy.check(url, None)
