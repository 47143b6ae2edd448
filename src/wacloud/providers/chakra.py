"""Chakra (chakrahq.com): a BSP proxy that forwards Meta-format webhooks for its plugins.

Events are parsed by the Meta parser but routed by the Chakra plugin id, and media is fetched
through Chakra's own endpoint because the Meta app (and its token) belong to Chakra.
"""

from __future__ import annotations

from urllib.parse import quote

from wacloud.domain.model import JSON, Channel, Event, MediaRef, Provider
from wacloud.providers import meta
from wacloud.providers.media import MediaDownload, MediaResolveError


def parse_webhook(payload: JSON, *, plugin_id: str) -> list[Event]:
    """Events of a Chakra pass-through webhook, keyed by `plugin_id` (the webhook URL's)."""
    return meta.parse_webhook(payload, provider=Provider.CHAKRA, channel_key=plugin_id)


def media_download(channel: Channel, media: MediaRef) -> MediaDownload:
    """The GET that streams a media file's bytes through Chakra's "show media" endpoint."""
    if not media.provider_media_id:
        raise MediaResolveError("media has no provider media id", temporary=False)
    media_id = quote(media.provider_media_id, safe="")
    return MediaDownload(
        url=f"{channel.base_url}/v1/whatsapp/{channel.graph_version}/media/{media_id}/show",
        headers={"Authorization": f"Bearer {channel.token}"}, mime_type=media.mime_type,
        sha256=media.sha256, size=media.size, filename=media.filename)
