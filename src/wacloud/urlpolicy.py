"""Which URLs we may fetch media from: https, the channel's provider hosts, public addresses.

This closes SSRF through a crafted media link. `allow_local` (the development setting
WACLOUD_DEV_ALLOW_LOCAL_URLS) permits plain http and loopback/private hosts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from wacloud.model import Channel, Provider

# Hosts each provider legitimately serves media from, besides the channel's API host.
PROVIDER_MEDIA_HOSTS: dict[Provider, tuple[str, ...]] = {
    Provider.META: ("graph.facebook.com", "lookaside.fbsbx.com", ".fbcdn.net", ".whatsapp.net"),
    Provider.WHAPI: ("gate.whapi.cloud", ".whapi.cloud"),
    Provider.CHAKRA: ("api.chakrahq.com", ".chakrahq.com"),
}


class UrlRefused(ValueError):
    """A media URL we will not fetch; the message says why (and never includes a secret)."""


def _host_allowed(host: str, channel: Channel) -> bool:
    api_host = (urlsplit(channel.base_url).hostname or "").lower()
    if host == api_host:
        return True
    for pattern in PROVIDER_MEDIA_HOSTS[channel.provider]:
        if pattern.startswith(".") and host.endswith(pattern):
            return True
        if host == pattern:
            return True
    return False


async def check_public_url(url: str, *, allow_local: bool) -> None:
    """For links a tenant gives us to send (outbound media): https and a public address."""
    parts = urlsplit(url)
    if parts.scheme != "https" and not (allow_local and parts.scheme == "http"):
        raise UrlRefused(f"media URL scheme {parts.scheme!r} refused (https only)")
    host = (parts.hostname or "").lower()
    if not host:
        raise UrlRefused("media URL has no host")
    if not allow_local:
        await _check_resolves_public(host, parts.port or 443)


async def _check_resolves_public(host: str, port: int) -> None:
    try:
        infos = await asyncio.to_thread(socket.getaddrinfo, host, port)
    except OSError as exc:
        raise UrlRefused(f"media host {host!r} does not resolve") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise UrlRefused(f"media host {host!r} resolves to a non-public address")


async def check_url(url: str, channel: Channel, *, allow_local: bool) -> None:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme != "https" and not (allow_local and parts.scheme == "http"):
        raise UrlRefused(f"media URL scheme {parts.scheme!r} refused (https only)")
    if not host:
        raise UrlRefused("media URL has no host")
    if not _host_allowed(host, channel):
        raise UrlRefused(f"media host {host!r} is not a {channel.provider.value} host "
                         "allowed for this channel")
    if not allow_local:
        await _check_resolves_public(host, parts.port or 443)
