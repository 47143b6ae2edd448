"""Media on Amazon S3 (or any S3 API): objects under `s3://BUCKET/PREFIX/<key>`.

Region, credentials and endpoint come the standard boto3 way (`AWS_REGION` /
`AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID` / profiles / instance roles, `AWS_ENDPOINT_URL`),
never from the URL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from wacloud.adapters.media.base import check_key

try:
    from wacloud.adapters.media.s3.store import S3MediaStore
except ModuleNotFoundError as exc:  # boto3 is an extra
    raise ModuleNotFoundError(f"s3:// media needs boto3 ({exc.name} is missing): "
                              "pip install 'wacloud[aws]'") from exc

if TYPE_CHECKING:
    from wacloud.settings import Settings

__all__ = ["S3MediaStore", "open_store", "parse_url"]


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://BUCKET/PREFIX` (the prefix may be empty)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.hostname:
        raise ValueError("WACLOUD_MEDIA_URL: expected s3://BUCKET/PREFIX")
    if "@" in parts.netloc or parts.port is not None:
        raise ValueError("WACLOUD_MEDIA_URL: s3:// takes a bucket name only; credentials and "
                         "endpoint come from the standard AWS variables (AWS_ENDPOINT_URL, ...)")
    if parts.query or parts.fragment:
        raise ValueError("WACLOUD_MEDIA_URL: s3://BUCKET/PREFIX takes no query or fragment")
    prefix = unquote(parts.path).strip("/")
    if prefix:
        check_key(prefix)
    # urlsplit lower-cases `hostname`; bucket names are lower-case anyway, netloc keeps it as is.
    return parts.netloc, prefix


def open_store(url: str, settings: Settings) -> S3MediaStore:
    bucket, prefix = parse_url(url)
    return S3MediaStore(bucket, prefix)
