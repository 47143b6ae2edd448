"""uvicorn's httptools protocol, with each response leaving in one write and every request
read within a deadline.

uvicorn writes a response's head on `http.response.start` and its body on
`http.response.body`: two sends, two TCP segments, per webhook answer. Writes made in one turn
of the event loop are joined here and sent at the end of the turn (bench/ingest.py: the second
send was ~5% of the event loop's time per webhook).

uvicorn 0.3x-0.5x times out only an idle keep-alive connection: a connection that never sends
a byte, or sends its headers or body one byte a second, is kept for ever. Here a new
connection gets the keep-alive timeout until its first byte, and each request must be read
whole (headers and body) within `request_timeout` of its first byte; a late one is answered
408 and the connection closed (the app, if it was reading the body, sees a disconnect).
A request that is not valid HTTP gets a JSON 400, like every other refusal.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class OneWriteTransport:
    """Delegates to `transport`, except that writes wait for the end of the loop's turn."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._pending is None:
            self._pending = [bytes(data)]
            self._loop.call_soon(self.flush)
        else:
            self._pending.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    request_timeout: float = 30.0

    @classmethod
    def configured(cls, request_timeout: float) -> type[HttpProtocol]:
        """This protocol with its read deadline: uvicorn builds protocols from a class."""
        return type(cls.__name__, (cls,), {"request_timeout": request_timeout})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._read_deadline: asyncio.TimerHandle | None = None
        self._request_started: float | None = None
        self._headers_read = False
        super().connection_made(OneWriteTransport(transport, self.loop))  # type: ignore[arg-type]
        # Until the first byte: uvicorn only arms this timer after a response.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_read_deadline()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._headers_read = False
        self._request_started = self.loop.time()
        # One timer per connection, looked at when it fires, rather than one armed and
        # cancelled per request: that cost ~4% of the webhooks a core answers.
        if self._read_deadline is None:
            self._read_deadline = self.loop.call_later(self.request_timeout,
                                                       self._check_read_deadline)

    def on_headers_complete(self) -> None:
        self._headers_read = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._request_started = None
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        # A request the parser refuses (a Content-Length that is not a number, a control
        # character in a header) never reaches the app: uvicorn answers it in plain text.
        # Every refusal of the gateway is JSON.
        body = json.dumps({"error": f"not a valid HTTP request ({msg.rstrip('.')})"}).encode()
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        self.transport.write(b"".join(head) + b"content-type: application/json\r\n"
                             b"content-length: " + str(len(body)).encode() + b"\r\n"
                             b"connection: close\r\n\r\n" + body)
        self.transport.close()

    def _stop_read_deadline(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _check_read_deadline(self) -> None:
        self._read_deadline = None
        started = self._request_started
        if started is None:
            return  # between requests: armed again by the next one
        left = started + self.request_timeout - self.loop.time()
        if left > 0:  # a later request than the one that armed it
            self._read_deadline = self.loop.call_later(left, self._check_read_deadline)
            return
        self._read_too_slow()

    def _read_too_slow(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle if self._headers_read else None
        if cycle is None or not cycle.response_started:
            body = json.dumps({"error": f"request not received within "
                                        f"{self.request_timeout:g} s"}).encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\n"
                                 b"content-type: application/json\r\n"
                                 b"content-length: " + str(len(body)).encode() + b"\r\n"
                                 b"connection: close\r\n\r\n" + body)
        if cycle is not None and not cycle.response_complete:
            # The app stops waiting for the rest of the body, and answers nothing more.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()
