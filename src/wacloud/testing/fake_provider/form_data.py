"""A small multipart/form-data parser (stdlib only; python-multipart is not a dependency).

Enough for the fake's upload endpoints: bodies are buffered anyway by the recorder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.message import Message


@dataclass(frozen=True)
class FormFile:
    filename: str | None
    content_type: str | None
    data: bytes = field(repr=False)


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, FormFile] = field(default_factory=dict)


def _header_params(name: str, value: str) -> Message:
    message = Message()
    message[name] = value
    return message


def parse_form(content_type: str, body: bytes) -> Form | None:
    """Parse a multipart/form-data body; None if it is not one or is malformed."""
    header = _header_params("content-type", content_type)
    boundary = header.get_param("boundary")
    if header.get_content_type() != "multipart/form-data" or not isinstance(boundary, str):
        return None
    form = Form()
    chunks = body.split(b"--" + boundary.encode("latin-1"))
    if len(chunks) < 3:
        return None
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            return form  # closing delimiter
        head, sep, content = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            return None
        content = content.removesuffix(b"\r\n")
        headers: dict[str, str] = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        disposition = _header_params("content-disposition", headers.get("content-disposition", ""))
        name = disposition.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            return None
        filename = disposition.get_filename()
        if filename is not None or "content-type" in headers:
            form.files[name] = FormFile(filename, headers.get("content-type"), content)
        else:
            form.fields[name] = content.decode("utf-8", "replace")
    return None  # no closing delimiter
