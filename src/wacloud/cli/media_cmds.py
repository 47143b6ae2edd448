"""`wacloud media url KEY`: a URL a reader can fetch one media object from, without wacloud's
credentials: presigned and expiring on S3, a `file://` URL for the local media folder."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from wacloud.adapters.media.base import MediaStoreMissing
from wacloud.bootstrap import open_media
from wacloud.cli.common import DataDir, JsonOut, emit, fail, media_app, settings_for
from wacloud.settings import Settings

MAX_EXPIRES_S = 7 * 24 * 3600  # what a SigV4 presigned URL allows


async def _url(settings: Settings, key: str, expires_s: int) -> str | None:
    store = open_media(settings)
    try:
        if not await store.exists(key):
            return None
        return await store.presigned_url(key, expires_s)
    finally:
        await store.close()


@media_app.command("url")
def url(key: Annotated[str, typer.Argument(help="A stored media key (a message's media.key).")],
        expires: Annotated[int, typer.Option(
            "--expires", min=1, max=MAX_EXPIRES_S,
            help="Seconds the URL stays valid (S3; a file:// URL does not expire).")] = 3600,
        data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Print a URL to fetch one media object (presigned on S3)."""
    settings = settings_for(data_dir, must_exist=False)  # S3 media needs no data dir
    if settings.media_url is None and not settings.data_dir.is_dir():
        fail(f"no data dir at {settings.data_dir} (run `wacloud init`)")
    try:
        link = asyncio.run(_url(settings, key, expires))
    except (ValueError, MediaStoreMissing, NotImplementedError) as exc:
        fail(str(exc))
        return
    if link is None:
        # The media URL names a folder or a bucket and prefix, never credentials.
        fail(f"no media object under {key!r} in {settings.media}")
        return
    expiring = not link.startswith("file:")
    expires_at = datetime.now(UTC) + timedelta(seconds=expires) if expiring else None
    emit({"key": key, "url": link, "expires_s": expires if expiring else None,
          "expires_at": expires_at.isoformat(timespec="seconds") if expires_at else None},
         as_json, link)
