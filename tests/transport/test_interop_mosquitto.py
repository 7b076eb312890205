"""Debian's ``mosquitto_sub`` over TLS, as the README tells a new user: it receives what
``mosquitto_pub`` sends over plain TCP; with mutual TLS its certificate's CN becomes the
username, and without a certificate it is refused. Readiness is the SUBACK that
``mosquitto_sub -d`` prints, never a sleep."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from tidemq.broker.hooks import ClientInfo, ConnectedEvent, HookPoint

from .conftest import CLIENT_CN, PKI, Start

HAVE_CLIENTS = shutil.which("mosquitto_pub") is not None and shutil.which("mosquitto_sub")
pytestmark = pytest.mark.skipif(
    not HAVE_CLIENTS and os.environ.get("CI") != "true",
    reason="mosquitto-clients not installed (scripts/services installs it)",
)


async def start_sub(*args: str) -> asyncio.subprocess.Process:
    # stdbuf: mosquitto_sub's stdout is block-buffered when piped.
    proc = await asyncio.create_subprocess_exec(
        "stdbuf", "-oL", "mosquitto_sub", "-d", *args, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        assert line, "mosquitto_sub exited before SUBACK"
        if b"SUBACK" in line:
            return proc


async def received(proc: asyncio.subprocess.Process) -> list[str]:
    out, _ = await asyncio.wait_for(proc.communicate(), 10)
    return [
        line
        for line in out.decode().splitlines()
        if not line.startswith(("Client ", "Subscribed "))
    ]


async def pub(port: int, *args: str) -> None:
    proc = await asyncio.create_subprocess_exec("mosquitto_pub", "-p", str(port), *args)
    assert await asyncio.wait_for(proc.wait(), 10) == 0


@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
async def test_mosquitto_sub_over_tls(start: Start, pki: PKI, version: str) -> None:
    async with start(["tcp://127.0.0.1:0", "tls://127.0.0.1:0"]) as running:
        tls = str(running.port("tls"))
        sub = await start_sub(
            "--cafile", pki.ca_file, "-h", "localhost", "-p", tls, "-V", version,
            "-t", "demo/#", "-C", "1", "-v",
        )  # fmt: skip
        await pub(running.port("tcp"), "-V", version, "-q", "1", "-t", "demo/hello", "-m", "world")
        assert await received(sub) == ["demo/hello world"]


async def test_mosquitto_sub_with_a_client_certificate(start: Start, pki: PKI) -> None:
    url = "tls://127.0.0.1:0?require_client_cert=true&cert_as_username=cn"
    async with start([url, "tcp://127.0.0.1:0"], {"listeners.tls.cafile": pki.ca_file}) as running:
        seen: list[ClientInfo] = []

        def on_connected(event: ConnectedEvent) -> None:
            seen.append(event.client)

        running.hooks.register(HookPoint.CLIENT_CONNECTED, on_connected)
        tls = str(running.port("tls"))
        sub = await start_sub(
            "--cafile", pki.ca_file, "--cert", pki.client_file, "--key", pki.client_file,
            "-h", "localhost", "-p", tls, "-t", "m/#", "-C", "1", "-v", "-i", "mtls-sub",
        )  # fmt: skip
        assert [(c.client_id, c.username) for c in seen] == [("mtls-sub", CLIENT_CN)]
        await pub(running.port("tcp"), "-t", "m/1", "-m", "signed")
        assert await received(sub) == ["m/1 signed"]
        refused = await asyncio.create_subprocess_exec(
            "mosquitto_sub", "--cafile", pki.ca_file, "-h", "localhost", "-p", tls,
            "-t", "m/#", "-C", "1", "-W", "5",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert await asyncio.wait_for(refused.wait(), 10) != 0
