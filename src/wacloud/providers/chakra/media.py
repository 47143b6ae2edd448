"""Chakra, media: a file's bytes stream through Chakra's own "show media" endpoint, because the
Meta app (and its token) belong to Chakra. No lookup call is needed."""

from __future__ import annotations

from urllib.parse import quote

from wacloud.domain.model import Channel, MediaRef
from wacloud.providers.media import MediaDownload, MediaResolveError


def media_download(channel: Channel, media: MediaRef) -> MediaDownload:
    """The GET that streams a media file's bytes through Chakra's "show media" endpoint."""
    if not media.provider_media_id:
        raise MediaResolveError("media has no provider media id", temporary=False)
    media_id = quote(media.provider_media_id, safe="")
    return MediaDownload(
        url=f"{channel.base_url}/v1/whatsapp/{channel.graph_version}/media/{media_id}/show",
        headers={"Authorization": f"Bearer {channel.token}"}, mime_type=media.mime_type,
        sha256=media.sha256, size=media.size, filename=media.filename)
