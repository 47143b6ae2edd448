"""How to fetch one inbound media file: the download request a provider module hands the media
worker, and the error it raises when it cannot even say where the file is."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class MediaDownload:
    """One GET that returns the file's bytes. `headers` may hold a bearer token, so it is kept
    out of `repr` to stop it leaking through logs or tracebacks."""

    url: str
    headers: dict[str, str] = field(repr=False)
    mime_type: str | None = None
    sha256: str | None = None
    size: int | None = None
    filename: str | None = None


class MediaResolveError(Exception):
    """The provider would not tell us where a media file is.

    `temporary` says whether a retry can help (5xx, 429, timeouts) or not (4xx: expired or
    unknown media id, bad credentials). The message never contains a token."""

    def __init__(self, reason: str, temporary: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.temporary = temporary

    def __repr__(self) -> str:
        return f"MediaResolveError({self.reason!r}, temporary={self.temporary})"


def lenient_int(value: Any) -> int | None:
    """An int from an int or a numeric string (providers send both); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None
