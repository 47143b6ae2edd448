"""The HTTP protocol that sends each response in one write, over real sockets."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import uvicorn

from wacloud.hosting.http_protocol import HttpProtocol, OneWriteTransport


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


async def test_writes_of_one_loop_turn_leave_together() -> None:
    real = RecordingTransport()
    transport = OneWriteTransport(real, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"body")
    assert real.writes == []
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    transport.write(b"last")
    transport.close()  # what is waiting goes out before the close
    assert real.writes[-1] == b"last" and real.closed


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/stream":  # no length: chunked, three body messages
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one ", b"two ", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})
        return
    body = b'{"ok":true}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def test_responses_keep_alive_stream_and_close_through_it() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http=HttpProtocol,
                                           lifespan="off", log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            answers = [await client.get("/") for _ in range(3)]  # one kept-alive connection
            assert [(a.status_code, a.content) for a in answers] == [(200, b'{"ok":true}')] * 3
            streamed = await client.get("/stream")
            assert streamed.content == b"one two three"
            closing = await client.get("/", headers={"connection": "close"})
            assert closing.content == b'{"ok":true}'
            assert closing.headers["connection"] == "close"
    finally:
        server.should_exit = True
        await serving
