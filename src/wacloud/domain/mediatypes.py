"""MIME types and file extensions, from what the provider declares and what the bytes show."""

from __future__ import annotations

import mimetypes

EXTENSIONS = {
    "image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp", "image/gif": ".gif",
    "audio/ogg": ".ogg", "audio/opus": ".opus", "audio/mpeg": ".mp3", "audio/mp4": ".m4a",
    "audio/aac": ".aac", "audio/amr": ".amr", "video/mp4": ".mp4", "video/3gpp": ".3gp",
    "application/pdf": ".pdf", "text/plain": ".txt", "text/csv": ".csv",
    "application/msword": ".doc", "application/vnd.ms-excel": ".xls",
    "application/vnd.ms-powerpoint": ".ppt", "application/zip": ".zip",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ".xlsx",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": ".pptx",
}

# Magic numbers for when the provider's declared type is missing or generic.
SIGNATURES: list[tuple[bytes, int, str]] = [
    (b"%PDF-", 0, "application/pdf"), (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"), (b"OggS", 0, "audio/ogg"), (b"GIF8", 0, "image/gif"),
    (b"ftyp", 4, "video/mp4"), (b"ID3", 0, "audio/mpeg"), (b"#!AMR", 0, "audio/amr"),
]


def base_type(mime: str | None) -> str | None:
    """`audio/ogg; codecs=opus` -> `audio/ogg`."""
    if not mime:
        return None
    return mime.split(";", 1)[0].strip().lower() or None


def sniff(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    for magic, offset, mime in SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return mime
    return None


def real_type(declared: str | None, header: str | None, head: bytes) -> str:
    for candidate in (base_type(declared), base_type(header)):
        if candidate and candidate != "application/octet-stream":
            return candidate
    return sniff(head) or "application/octet-stream"


def extension_for(mime: str, filename: str | None = None) -> str:
    if mime in EXTENSIONS:
        return EXTENSIONS[mime]
    guessed = mimetypes.guess_extension(mime)
    if guessed:
        return guessed
    if filename and "." in filename:
        suffix = "." + filename.rsplit(".", 1)[1].lower()
        if suffix[1:].isalnum() and len(suffix) <= 8:
            return suffix
    return ".bin"
