"""Meta WhatsApp Cloud API, media: the Graph lookup that says where a media id's file is, and
what its answer means. The caller performs the lookup (and then the download)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode

from wacloud.domain.model import Channel, MediaRef, ProviderRequest
from wacloud.providers.media import MediaDownload, MediaResolveError, lenient_int
from wacloud.providers.meta.inbound import as_dict, as_str

# Graph error codes that mean "overloaded or throttled" even when the HTTP status is 4xx.
_TEMPORARY_GRAPH_CODES = frozenset({1, 2, 4, 80007, 130429, 131000, 131016, 131057, 133004})


def _headers(channel: Channel) -> dict[str, str]:
    return {"Authorization": f"Bearer {channel.token}"}


def link_download(media: MediaRef) -> MediaDownload:
    """A media file the webhook gave a direct link for (no lookup, no token)."""
    assert media.link is not None
    return MediaDownload(url=media.link, headers={}, mime_type=media.mime_type,
                         sha256=media.sha256, size=media.size, filename=media.filename)


def lookup_request(channel: Channel, media: MediaRef) -> ProviderRequest:
    """The Graph API call that says where a media id's file is. Its URL lives about five
    minutes and needs the same bearer token, so the download must follow right away."""
    media_id = media.provider_media_id
    if not media_id:
        raise MediaResolveError("media has no provider media id", temporary=False)
    url = f"{channel.base_url}/{channel.graph_version}/{quote(media_id, safe='')}"
    if channel.phone_number_id:
        url += "?" + urlencode({"phone_number_id": channel.phone_number_id})
    return ProviderRequest("GET", url, headers=_headers(channel))


def _graph_error(body: bytes, token: str) -> tuple[str, bool]:
    """A short, token-free description of a Graph error body, and whether its code is a
    throttle/overload one (Meta answers those with HTTP 400 too)."""
    try:
        error = as_dict(as_dict(json.loads(body)).get("error"))
    except ValueError:
        return "", False
    code = error.get("code")
    message = str(error.get("message") or "")[:200]
    if token:
        message = message.replace(token, "***")
    throttled = isinstance(code, int) and code in _TEMPORARY_GRAPH_CODES
    return (f" (code {code}: {message})" if code is not None or message else ""), throttled


def read_lookup(channel: Channel, media: MediaRef, status: int, body: bytes) -> MediaDownload:
    """The download the Graph API's answer to `lookup_request` points at; MediaResolveError
    when it points nowhere (temporary for 5xx, 408, 429 and throttle codes)."""
    media_id = media.provider_media_id
    if not 200 <= status < 300:
        detail, throttled = _graph_error(body, channel.token)
        temporary = throttled or status >= 500 or status in (408, 429)
        raise MediaResolveError(f"Graph API answered HTTP {status} for media {media_id}{detail}",
                                temporary=temporary)
    try:
        data = as_dict(json.loads(body))
    except ValueError:
        raise MediaResolveError(f"Graph API sent a non-JSON answer for media {media_id}",
                                temporary=True) from None
    download_url = as_str(data.get("url"))
    if not download_url:
        raise MediaResolveError(f"Graph API answer for media {media_id} has no url",
                                temporary=False)
    return MediaDownload(
        url=download_url, headers=_headers(channel),
        mime_type=as_str(data.get("mime_type")) or media.mime_type,
        sha256=as_str(data.get("sha256")) or media.sha256,
        size=_first_int(data.get("file_size"), media.size), filename=media.filename)


def _first_int(value: Any, fallback: int | None) -> int | None:
    parsed = lenient_int(value)
    return fallback if parsed is None else parsed
