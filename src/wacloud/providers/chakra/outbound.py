"""Chakra (chakrahq.com), send side: Meta's send body through Chakra's pass-through endpoint,
public-media re-hosting for media links, and what Chakra's answer means for the outbox row.

Chakra wraps responses in `{_data, _meta, _errors}` and may pass Meta's `error` through; the
exact shapes are not documented (spec §6), so responses are read defensively and Meta error
codes are classified by the same table as Meta's (`wacloud.providers.errors`).

Media: like the original system, a media message's `link` is downloaded by the sender and
re-uploaded to Chakra's public media store (`upload_request` / `parse_upload`), then the message
is sent with the public URL (`with_link`). Public URLs are readable by anyone who has them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from wacloud.domain.model import (
    JSON,
    Channel,
    OutboundMessage,
    ProviderRequest,
    SendResult,
)
from wacloud.providers.base import ChannelMisconfigured, UploadError
from wacloud.providers.errors import (
    GraphError,
    UnsupportedMessage,
    classify_graph,
    excerpt,
    graph_error,
    load_json,
)
from wacloud.providers.meta import outbound as meta_outbound

# Links already on Chakra's own hosts (for instance a retried row that was re-hosted before)
# are not uploaded again.
CHAKRA_HOST_SUFFIX = "chakrahq.com"


def _plugin_url(channel: Channel) -> str:
    return f"{channel.base_url}/v1/ext/plugin/whatsapp/{quote(channel.key, safe='')}"


def build_send(channel: Channel, message: OutboundMessage) -> ProviderRequest:
    """Chakra's pass-through send: Meta's exact body under the plugin's URL."""
    if message.is_legacy:
        return meta_outbound.legacy_request(channel, message)
    if not channel.phone_number_id:
        raise ChannelMisconfigured(f"Chakra channel {channel.id} has no phone_number_id")
    url = (f"{_plugin_url(channel)}/api/{channel.graph_version}/"
           f"{quote(channel.phone_number_id, safe='')}/messages")
    return ProviderRequest(method="POST", url=url, headers=meta_outbound.auth_headers(channel),
                           json=meta_outbound.message_body(message))


def upload_request(channel: Channel, filename: str, path: str, mime_type: str) -> ProviderRequest:
    """Multipart upload of a local file to Chakra's public media store."""
    return ProviderRequest(method="POST", url=f"{_plugin_url(channel)}/upload-public-media",
                           headers={"Authorization": f"Bearer {channel.token}"},
                           files={"file": (filename, path, mime_type)},
                           data={"filename": filename})


def _dict(value: Any) -> JSON:
    return value if isinstance(value, dict) else {}


def parse_upload(status: int, body: bytes) -> str:
    """The public URL of an upload (`_data.publicMediaUrl`); UploadError otherwise."""
    payload = load_json(body)
    url = _dict(_dict(payload).get("_data")).get("publicMediaUrl")
    if 200 <= status < 300 and isinstance(url, str) and urlsplit(url).scheme in ("http", "https"):
        return url
    found = _error(payload)
    detail = found[1].reason if found else (excerpt(body) or "empty body")
    if 200 <= status < 300:
        reason = f"Chakra upload answered HTTP {status} without a publicMediaUrl: {detail}"
    else:
        reason = f"Chakra upload failed with HTTP {status}: {detail}"
    raise UploadError(reason[:300], temporary=status == 429 or status >= 500)


def _legacy_body(message: OutboundMessage) -> JSON | None:
    try:
        body = json.loads(message.request_body or "")
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _media_object(message: OutboundMessage) -> JSON | None:
    """The media object (`{"link"|"id", ...}`) of a media message, normalized or legacy."""
    if message.is_legacy:
        body = _legacy_body(message)
        kind = body.get("type") if body else None
        media = body.get(kind) if body and isinstance(kind, str) else None
    else:
        kind, media = message.type, message.content
    if kind not in meta_outbound.MEDIA_TYPES or not isinstance(media, dict):
        return None
    return media


def media_link(message: OutboundMessage) -> str | None:
    """The link the sender must re-host on Chakra before sending, or None (not media, sent by
    media id, or already on a Chakra host)."""
    media = _media_object(message)
    link = media.get("link") if media else None
    if not isinstance(link, str) or not link:
        return None
    host = (urlsplit(link).hostname or "").lower()
    if host == CHAKRA_HOST_SUFFIX or host.endswith("." + CHAKRA_HOST_SUFFIX):
        return None
    return link


def with_link(message: OutboundMessage, url: str) -> OutboundMessage:
    """A copy of a media message whose link is `url` (legacy rows get a rewritten body)."""
    if message.is_legacy:
        body = _legacy_body(message)
        kind = body.get("type") if body else None
        if not body or not isinstance(kind, str) or not isinstance(body.get(kind), dict):
            raise UnsupportedMessage("legacy row is not a media message")
        body[kind] = {**body[kind], "link": url}
        return dataclasses.replace(message, request_body=json.dumps(body, ensure_ascii=False))
    if message.type not in meta_outbound.MEDIA_TYPES:
        raise UnsupportedMessage(f"{message.type!r} message has no media link")
    return dataclasses.replace(message, content={**message.content, "link": url})


def message_id(payload: Any) -> str | None:
    """The wamid: `_data.whatsappMessageId`, `_data.messages[0].id`, then `messages[0].id`."""
    data = _dict(_dict(payload).get("_data"))
    wamid = data.get("whatsappMessageId")
    if isinstance(wamid, str) and wamid:
        return wamid
    return meta_outbound.message_id(data) or meta_outbound.message_id(payload)


def _error(payload: Any) -> GraphError | None:
    """The first error in a Chakra body, preferring one that carries a Graph code: Meta's
    `error` passed through, `_data.error`, or an `_errors[]` item (itself, or its `error`)."""
    root = _dict(payload)
    candidates: list[Any] = [root.get("error"), _dict(root.get("_data")).get("error")]
    items = root.get("_errors")
    for item in items if isinstance(items, list) else [items]:
        if isinstance(item, dict):
            candidates.extend([item.get("error"), item])
        else:
            candidates.append(item)
    found = [e for e in (graph_error(c) for c in candidates if c) if e is not None]
    with_code = [e for e in found if e[0] is not None]
    return (with_code or found)[0] if found else None


def classify(status: int, body: bytes, headers: Mapping[str, str], *,
             secrets: Iterable[str] = ()) -> SendResult:
    """What a Chakra send response means for the row, by the Meta error code it carries."""
    payload = load_json(body)
    data = _dict(_dict(payload).get("_data"))
    success = data.get("success", _dict(payload).get("success"))
    return classify_graph(status, body, headers, message_id=message_id(payload),
                          success=success if isinstance(success, bool) else None,
                          error=_error(payload), secrets=secrets)
