"""mqtts:// against a Mosquitto TLS listener (certificates from trustme): server
verification, a client certificate, a failed verification, and ``tidemq pub --cafile``."""

from __future__ import annotations

import asyncio
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tidemq.client import Client, MQTTConnectionError

from .conftest import MosquittoServer, _need_mosquitto

trustme = pytest.importorskip("trustme")
WAIT = 10.0


class TLSBroker:
    def __init__(self, server: MosquittoServer, ca: object, files: dict[str, Path]) -> None:
        self.server = server
        self.ca = ca
        self.files = files

    @property
    def url(self) -> str:
        return f"mqtts://localhost:{self.server.port}"


@pytest.fixture
async def tls_broker(tmp_path: Path) -> AsyncIterator[TLSBroker]:
    _need_mosquitto()
    ca = trustme.CA()
    server_cert = ca.issue_cert("localhost", "127.0.0.1")
    client_cert = ca.issue_cert("device-1")
    files = {
        "ca": tmp_path / "ca.pem",
        "cert": tmp_path / "server.pem",
        "key": tmp_path / "server.key",
        "client": tmp_path / "client.pem",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server_cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    server_cert.private_key_pem.write_to_path(str(files["key"]))
    client_cert.private_key_and_cert_chain_pem.write_to_path(str(files["client"]))
    server = MosquittoServer(
        tmp_path,
        extra=(
            f"cafile {files['ca']}\ncertfile {files['cert']}\nkeyfile {files['key']}\n"
            "require_certificate true\n"
        ),
    )
    await server.start()
    try:
        yield TLSBroker(server, ca, files)
    finally:
        await server.kill()


def client_context(broker: TLSBroker, *, with_cert: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(broker.files["ca"]))
    if with_cert:
        context.load_cert_chain(str(broker.files["client"]))
    return context


async def test_mqtts_round_trip(tls_broker: TLSBroker) -> None:
    async with (
        Client(tls_broker.url, ssl=client_context(tls_broker)) as client,
        client.subscribe("tls/#", qos=1) as sub,
    ):
        await client.publish("tls/x", "secret", qos=1)
        assert (await sub.get(WAIT)).payload == b"secret"


async def test_untrusted_server_is_refused(tls_broker: TLSBroker) -> None:
    other = trustme.CA()
    context = ssl.create_default_context()
    other.configure_trust(context)
    with pytest.raises(MQTTConnectionError) as info:
        await Client(tls_broker.url, ssl=context, reconnect=False).connect()
    assert not info.value.is_temporary  # retrying cannot fix a certificate


async def test_missing_client_certificate_is_refused(tls_broker: TLSBroker) -> None:
    client = Client(tls_broker.url, ssl=client_context(tls_broker, with_cert=False))
    with pytest.raises(MQTTConnectionError):
        await client.connect()


async def test_cli_over_tls(tls_broker: TLSBroker) -> None:
    files = tls_broker.files
    tls = (
        "-h",
        "localhost",
        "-p",
        str(tls_broker.server.port),
        "--cafile",
        str(files["ca"]),
        "--cert",
        str(files["client"]),
    )
    sub = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidemq",
        "sub",
        *tls,
        "-t",
        "clitls",
        "-C",
        "1",
        "-d",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert sub.stderr is not None
    while b"SUBACK" not in (line := await asyncio.wait_for(sub.stderr.readline(), WAIT)):
        assert line, "tidemq sub exited early"
    pub = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidemq",
        "pub",
        *tls,
        "-t",
        "clitls",
        "-m",
        "over tls",
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(pub.communicate(), WAIT)
    assert pub.returncode == 0, err
    out, _ = await asyncio.wait_for(sub.communicate(), WAIT)
    assert out == b"over tls\n"
