"""`python -m wacloud.testing.fake_provider`: run the fake provider standalone.

Prints the URL it listens on (never the token). `--port 0` picks a free port, which the
printed URL then reports, so a benchmark can start it in a subprocess and read stdout.
"""

from __future__ import annotations

import argparse
import os
import socket

import uvicorn

from wacloud.testing.fake_provider.provider import FakeProvider
from wacloud.testing.fake_provider.state import DEFAULT_TOKEN, DEFAULT_URL_TTL


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake Meta/Whapi/Chakra provider")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9900)
    parser.add_argument(
        "--url-ttl",
        type=float,
        default=DEFAULT_URL_TTL,
        help="seconds a resolved Meta media URL stays valid",
    )
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    # Token from the environment, not argv, so it does not show up in `ps`.
    token = os.environ.get("WACLOUD_FAKE_TOKEN") or DEFAULT_TOKEN
    provider = FakeProvider(token=token, url_ttl=args.url_ttl)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    port = sock.getsockname()[1]
    print(f"fake provider listening on http://{args.host}:{port}", flush=True)
    config = uvicorn.Config(
        provider.app, log_level=args.log_level, access_log=False, lifespan="off"
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
