"""A tiny real HTTP server for SSRF tests: it redirects wherever a test asks, serves a file,
an oversized file, a slow file, and a Graph-style media lookup pointing anywhere.

Routes: `/file`, `/redirect?to=URL`, `/chain/N` (N redirects, then the file), `/big`
(`big_bytes` bytes, no Content-Length), `/slow` (one byte every 50 ms), `/v23.0/to:URL` (a
Graph API media lookup whose answer points at URL). Every request is recorded in `seen`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

BODY = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 16
MAX_BYTES = 64 * 1024


@dataclass
class Seen:
    path: str
    host: str | None
    authorization: bool


@dataclass
class LocalServer:
    """One running stub server (see the module docstring for its routes)."""

    server: ThreadingHTTPServer
    seen: list[Seen] = field(default_factory=list)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"


def serve(big_bytes: int = MAX_BYTES + 1) -> Iterator[LocalServer]:
    """Run a stub server on 127.0.0.1 (a free port) until the generator is closed."""
    holder: list[LocalServer] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output quiet

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            holder[0].seen.append(Seen(parts.path, self.headers.get("Host"),
                                       "Authorization" in self.headers))
            if parts.path == "/file":
                self._send(200, BODY, "image/jpeg")
            elif parts.path == "/redirect":
                self._redirect(query["to"][0])
            elif parts.path.startswith("/chain/"):
                left = int(parts.path.rsplit("/", 1)[1])
                if left == 0:
                    self._send(200, BODY, "image/jpeg")
                else:
                    self._redirect(f"/chain/{left - 1}")
            elif parts.path == "/big":
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.end_headers()  # no length: the limit is only found while reading
                try:
                    for start in range(0, big_bytes, 65536):
                        self.wfile.write(b"\0" * min(65536, big_bytes - start))
                except OSError:
                    pass  # the client stopped reading at its limit, as it should
                self.close_connection = True
            elif parts.path == "/slow":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", "200")
                self.end_headers()
                try:
                    for _ in range(200):  # one byte every 50 ms: each read is quick
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.05)
                except OSError:
                    pass  # the client gave up, as it should
            elif parts.path.startswith("/v23.0/to:"):
                target = unquote(parts.path[len("/v23.0/to:"):])
                self._send(200, json.dumps({"url": target,
                                            "mime_type": "image/jpeg"}).encode(),
                           "application/json")
            else:
                self._send(404, b"not found", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _redirect(self, location: str) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    holder.append(LocalServer(server))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder[0]
    finally:
        server.shutdown()
        server.server_close()
