"""Object stores for media files, one adapter per folder, chosen by `WACLOUD_MEDIA_URL`.

Each adapter module has `open_store(url, settings)`; the URL's scheme picks the module
(imported only when used). Adding a store: its folder beside `local/`, one line in `ADAPTERS`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from wacloud.adapters.media.base import MediaStore
    from wacloud.settings import Settings

ADAPTERS: dict[str, str] = {
    "file": "wacloud.adapters.media.local.store",
    "s3": "wacloud.adapters.media.s3",
}


def open_media_store(url: str, settings: Settings) -> MediaStore:
    """The media store of `url` (`file:///PATH`, `s3://BUCKET/PREFIX`)."""
    scheme = urlsplit(url).scheme
    module_name = ADAPTERS.get(scheme)
    if module_name is None:
        raise ValueError(f"WACLOUD_MEDIA_URL: unknown scheme {scheme!r} "
                         f"(known: {', '.join(sorted(ADAPTERS))})")
    store: MediaStore = importlib.import_module(module_name).open_store(url, settings)
    return store
