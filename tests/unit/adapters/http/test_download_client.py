"""DownloadClient against a real local HTTPS server: the connection goes to the address the
copier pinned while TLS checks the certificate against the host name it passes, and a
connection checked for one host name is never reused for another."""

from __future__ import annotations

import datetime
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from wacloud.adapters.http.download_client import ConnectFailed, DownloadClient

HOST = "media.example.test"
BODY = bytes(range(256)) * 300  # a few chunks


@dataclass
class TlsServer:
    port: int
    ca_file: Path
    hosts: list[str | None] = field(default_factory=list)  # Host header of each request
    connections: set[tuple[str, int]] = field(default_factory=set)  # client ends seen


def _certificates(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for HOST signed by it: (ca, cert, key) files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wacloud test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@pytest.fixture()
def tls_server(tmp_path: Path) -> Iterator[TlsServer]:
    ca_file, cert_file, key_file = _certificates(tmp_path)
    holder: list[TlsServer] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the pool may reuse the connection

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            holder[0].hosts.append(self.headers.get("Host"))
            holder[0].connections.add(self.client_address)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    holder.append(TlsServer(server.server_address[1], ca_file))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield holder[0]
    server.shutdown()
    server.server_close()


def _client(server: TlsServer) -> DownloadClient:
    return DownloadClient(tls=ssl.create_default_context(cafile=str(server.ca_file)))


async def test_a_pinned_address_is_reached_with_the_host_name_checked_by_tls(
        tls_server: TlsServer) -> None:
    async with _client(tls_server) as client:
        download = await client.get(f"https://127.0.0.1:{tls_server.port}/file",
                                    {"Host": f"{HOST}:{tls_server.port}"},
                                    server_hostname=HOST, timeout=10)
        try:
            assert download.status == 200
            assert download.headers["content-type"] == "image/jpeg"
            assert b"".join([chunk async for chunk in download.chunks()]) == BODY
        finally:
            download.release()
    assert tls_server.hosts == [f"{HOST}:{tls_server.port}"]


async def test_a_certificate_for_another_host_name_is_refused(tls_server: TlsServer) -> None:
    async with _client(tls_server) as client:
        with pytest.raises(ConnectFailed) as failure:
            await client.get(f"https://127.0.0.1:{tls_server.port}/file", {},
                             server_hostname="other.example.test", timeout=10)
    assert "127.0.0.1" not in str(failure.value)  # the kind of failure only, no URL
    assert tls_server.hosts == []


async def test_a_connection_checked_for_one_host_name_is_not_reused_for_another(
        tls_server: TlsServer) -> None:
    """Two names on one address: the second must get a TLS check of its own (and fail here,
    where the certificate names only the first), not ride on the first one's connection."""
    url = f"https://127.0.0.1:{tls_server.port}/file"
    async with _client(tls_server) as client:
        for _ in range(2):  # the second request reuses the first's connection
            download = await client.get(url, {}, server_hostname=HOST, timeout=10)
            assert b"".join([chunk async for chunk in download.chunks()]) == BODY
            download.release()
        assert len(tls_server.connections) == 1
        with pytest.raises(ConnectFailed):
            await client.get(url, {}, server_hostname="other.example.test", timeout=10)


async def test_a_refused_connection_says_so_without_the_address() -> None:
    async with DownloadClient() as client:
        with pytest.raises(ConnectFailed) as failure:
            await client.get("http://127.0.0.1:9/file", {}, server_hostname=None, timeout=5)
    assert "127.0.0.1" not in str(failure.value)
