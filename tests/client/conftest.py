"""Brokers for the client tests: an in-process TideMQ that can be stopped and started again
on the same port, and a real Mosquitto process (Debian's ``mosquitto``) on a free port.

Readiness is awaited, never slept for: TideMQ's ``start()`` returns once bound; Mosquitto
is ready when it logs "running" and its port accepts a connection. Under ``CI=true`` a
missing ``mosquitto`` binary is a failure; elsewhere the Mosquitto tests skip.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tidemq.app import Broker
from tidemq.testing import broker_settings

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
)
START_TIMEOUT = 10.0


def free_port() -> int:
    """A port nobody listens on now: bind port 0, read it, close. Never 1883."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TideMQServer:
    """An in-process TideMQ broker that can be stopped and restarted on the same ports:
    MQTT on ``port``, MQTT over WebSocket on ``ws_port`` (path ``/mqtt``)."""

    def __init__(self, **settings: object) -> None:
        self.settings = settings
        self.broker: Broker | None = None
        self.port = 0
        self.ws_port = 0
        self.name = "tidemq"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/mqtt"

    async def start(self) -> None:
        broker = Broker(
            listen=[f"tcp://127.0.0.1:{self.port}", f"ws://127.0.0.1:{self.ws_port}/mqtt"],
            settings=broker_settings(**self.settings),
        )
        await broker.start()
        self.broker = broker
        self.port = broker.port
        self.ws_port = next(port for scheme, _, port in broker.addresses if scheme == "ws")

    async def stop(self) -> None:
        if self.broker is not None:
            await self.broker.stop()
            self.broker = None

    async def kill(self) -> None:
        await self.stop()


class MosquittoServer:
    """A Mosquitto process on 127.0.0.1 and ports picked once, kept across restarts: MQTT
    on ``port`` and, with *websockets*, MQTT over WebSocket on ``ws_port``."""

    def __init__(self, workdir: Path, extra: str = "", *, websockets: bool = False) -> None:
        assert MOSQUITTO is not None
        self.port = free_port()
        self.ws_port = free_port() if websockets else 0
        self.config = workdir / "mosquitto.conf"
        # Debian's mosquitto is built with WebSocket support (libwebsockets); the
        # listener serves any path with the "mqtt" subprotocol.
        ws = f"listener {self.ws_port} 127.0.0.1\nprotocol websockets\n" if websockets else ""
        # "user root": run as whoever started it, so it can read files under tmp_path.
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"{extra}"
            f"{ws}"
            "allow_anonymous true\n"
            "user root\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
        )
        self.proc: asyncio.subprocess.Process | None = None
        self.name = "mosquitto"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        assert self.ws_port, "started without websockets=True"
        return f"ws://127.0.0.1:{self.ws_port}/mqtt"

    async def start(self) -> None:
        assert MOSQUITTO is not None
        proc = await asyncio.create_subprocess_exec(
            MOSQUITTO,
            "-c",
            str(self.config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self.proc = proc
        assert proc.stderr is not None
        seen: list[bytes] = []
        try:
            while True:
                line = await asyncio.wait_for(proc.stderr.readline(), START_TIMEOUT)
                if not line:
                    raise RuntimeError("mosquitto exited: " + b"".join(seen).decode())
                seen.append(line)
                if b" running" in line:
                    break
            # It logs "running" after binding; prove it with a connection.
            _, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.port), START_TIMEOUT
            )
            writer.close()
            await writer.wait_closed()
        except BaseException:
            await self.kill()
            raise
        # Keep draining its log so a full pipe never blocks it.
        self._drain = asyncio.get_running_loop().create_task(self._drain_stderr(proc))

    @staticmethod
    async def _drain_stderr(proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while await proc.stderr.readline():
            pass

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(sig)
        await asyncio.wait_for(proc.wait(), START_TIMEOUT)
        drain = getattr(self, "_drain", None)
        if drain is not None:
            await asyncio.gather(drain, return_exceptions=True)

    async def stop(self) -> None:
        await self.kill(signal.SIGTERM)


def _need_mosquitto() -> None:
    if MOSQUITTO is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mosquitto is not installed (scripts/services installs it)")
        pytest.skip("mosquitto is not installed (scripts/services installs it)")


@pytest.fixture
async def tidemq(request: pytest.FixtureRequest) -> AsyncIterator[TideMQServer]:
    marker = request.node.get_closest_marker("broker_settings")
    server = TideMQServer(**(dict(marker.kwargs) if marker else {}))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def mosquitto(tmp_path: Path) -> AsyncIterator[MosquittoServer]:
    _need_mosquitto()
    server = MosquittoServer(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


@pytest.fixture(params=["tidemq", "mosquitto"])
async def server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[TideMQServer | MosquittoServer]:
    """Each test using it runs against TideMQ and against Mosquitto (both also listening
    for MQTT over WebSocket: ``ws_url``)."""
    srv: TideMQServer | MosquittoServer
    if request.param == "tidemq":
        srv = TideMQServer()
    else:
        _need_mosquitto()
        srv = MosquittoServer(tmp_path, websockets=True)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.kill()
