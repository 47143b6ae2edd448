"""Whapi.Cloud, media: where to download a message's file (no lookup call needed)."""

from __future__ import annotations

from urllib.parse import quote, urlsplit

from wacloud.domain.model import Channel, MediaRef
from wacloud.providers.media import MediaDownload, MediaResolveError


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or {"https": 443, "http": 80}.get(scheme)


def media_download(channel: Channel, media: MediaRef) -> MediaDownload:
    """The GET that returns a Whapi media file: the auto-download `link` when the webhook had
    one, else the media endpoint by id. The channel token is only sent to the channel's own
    API origin, never to a third-party host a link might point at."""
    if media.link:
        headers: dict[str, str] = {}
        if _origin(media.link) == _origin(channel.base_url):
            headers["Authorization"] = f"Bearer {channel.token}"
        url = media.link
    elif media.provider_media_id:
        url = f"{channel.base_url}/media/{quote(media.provider_media_id, safe='')}"
        headers = {"Authorization": f"Bearer {channel.token}"}
    else:
        raise MediaResolveError("media has neither a link nor a provider media id",
                                temporary=False)
    return MediaDownload(url=url, headers=headers, mime_type=media.mime_type,
                         sha256=media.sha256, size=media.size, filename=media.filename)
