"""wacloud.domain.mediatypes: the real MIME type of a media file and the extension it is stored
with."""

from __future__ import annotations

import pytest

from wacloud.domain.mediatypes import base_type, extension_for, real_type, sniff

PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01"
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 "
OGG = b"OggS\x00\x02\x00\x00\x00\x00\x00\x00"


def stored_extension(declared: str | None, header: str | None = None, head: bytes = b"",
                     filename: str | None = None) -> str:
    return extension_for(real_type(declared, header, head), filename)


def test_declared_type_with_parameters_gives_its_extension() -> None:
    assert base_type("audio/ogg; codecs=opus") == "audio/ogg"
    assert real_type("audio/ogg; codecs=opus", None, b"") == "audio/ogg"
    assert stored_extension("audio/ogg; codecs=opus") == ".ogg"
    assert stored_extension("Image/JPEG ; charset=binary") == ".jpg"


@pytest.mark.parametrize(("mime", "ext"), [
    ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", ".docx"),
    ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", ".xlsx"),
    ("application/vnd.openxmlformats-officedocument.presentationml.presentation", ".pptx"),
    ("application/pdf", ".pdf"), ("image/jpeg", ".jpg"), ("audio/mpeg", ".mp3"),
    ("video/mp4", ".mp4"), ("image/webp", ".webp"),
])
def test_known_types_have_their_extension(mime: str, ext: str) -> None:
    assert extension_for(mime) == ext


@pytest.mark.parametrize(("head", "mime", "ext"), [
    (PDF, "application/pdf", ".pdf"), (PNG, "image/png", ".png"),
    (JPEG, "image/jpeg", ".jpg"), (WEBP, "image/webp", ".webp"), (OGG, "audio/ogg", ".ogg"),
])
@pytest.mark.parametrize("declared", [None, "", "application/octet-stream",
                                      "APPLICATION/OCTET-STREAM; x=y"])
def test_sniffs_the_bytes_when_declared_type_is_missing_or_generic(
        head: bytes, mime: str, ext: str, declared: str | None) -> None:
    assert sniff(head) == mime
    assert real_type(declared, None, head) == mime
    assert real_type(declared, "application/octet-stream", head) == mime
    assert stored_extension(declared, None, head) == ext


def test_declared_type_wins_over_header_and_bytes() -> None:
    assert real_type("image/png", "application/pdf", PDF) == "image/png"


def test_header_type_is_used_when_declared_is_missing() -> None:
    assert real_type(None, "image/gif", PNG) == "image/gif"


def test_unknown_bytes_and_type_are_octet_stream_and_bin() -> None:
    assert sniff(b"just some text") is None
    assert real_type(None, None, b"just some text") == "application/octet-stream"
    assert stored_extension(None, None, b"just some text") == ".bin"
    assert extension_for("application/x-wacloud-unknown") == ".bin"


def test_unknown_type_falls_back_to_the_filename_suffix() -> None:
    assert extension_for("application/x-wacloud-unknown", "Report.QXZ") == ".qxz"
    assert stored_extension("application/x-wacloud-unknown", None, b"????",
                            "notes.v2.abc") == ".abc"


@pytest.mark.parametrize("filename", [None, "noext", "bad.ta r", "x.waytoolongext",
                                      "evil./../../x"])
def test_unusable_filename_suffix_gives_bin(filename: str | None) -> None:
    assert extension_for("application/x-wacloud-unknown", filename) == ".bin"


def test_empty_head_sniffs_nothing() -> None:
    assert sniff(b"") is None
    assert base_type(None) is None
    assert base_type(" ; codecs=x") is None
