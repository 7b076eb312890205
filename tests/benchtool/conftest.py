"""Helpers for the ``tidemq bench`` tests: run the command as users do (``python -m tidemq
bench …`` in a subprocess) against an in-process broker on port 0.

A bench that must be up before another starts (``sub`` before ``pub``) prints
"…clients subscribed/connected…" on stderr once its clients are all in place: that line is
the readiness signal, never a sleep. The ``tls_broker`` fixture serves tcp, tls and ws
listeners with a trustme CA (as tests/transport does).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import trustme

from tidemq.app import Broker
from tidemq.config import Config
from tidemq.testing import broker_settings

# Each bench in these tests is bounded by -L/--duration to a second or two; this is only
# the ceiling for a hung process.
WAIT = 20.0


@dataclass
class BenchResult:
    status: int
    stdout: str
    stderr: str

    @property
    def report(self) -> dict[str, Any]:
        return json.loads(self.stdout)  # type: ignore[no-any-return]


class Bench:
    """A running ``tidemq bench`` subprocess."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._err: list[bytes] = []

    async def wait_ready(self) -> str:
        """Read stderr up to the "clients connected/subscribed" line and return it."""
        assert self.proc.stderr is not None
        while True:
            line = await asyncio.wait_for(self.proc.stderr.readline(), WAIT)
            assert line, "bench exited before its clients were up: " + b"".join(self._err).decode(
                errors="replace"
            )
            self._err.append(line)
            text = line.decode()
            if text.startswith("tidemq bench ") and ("connected" in text or "subscribed" in text):
                return text

    def interrupt(self) -> None:
        self.proc.send_signal(signal.SIGINT)

    async def result(self) -> BenchResult:
        out, err = await asyncio.wait_for(self.proc.communicate(), WAIT)
        assert self.proc.returncode is not None
        return BenchResult(self.proc.returncode, out.decode(), (b"".join(self._err) + err).decode())


# Benches started by the running test; the autouse fixture below reaps whatever a failing
# test left running, so its pipes are closed in that test and not reported in another.
_started: list[Bench] = []


@pytest.fixture(autouse=True)
async def _reap_benches() -> AsyncIterator[None]:
    yield
    while _started:
        left = _started.pop()
        if left.proc.returncode is None:
            left.proc.kill()
        await asyncio.wait_for(left.proc.communicate(), WAIT)


async def start_bench(*args: str, env: dict[str, str] | None = None) -> Bench:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidemq",
        "bench",
        *args,
        env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    started = Bench(proc)
    _started.append(started)
    return started


async def bench(*args: str, env: dict[str, str] | None = None) -> BenchResult:
    return await (await start_bench(*args, env=env)).result()


def free_port() -> int:
    """A port nobody listens on: bind port 0, read it, close (never 1883)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class TLSBroker:
    broker: Broker
    ca_file: str
    client_file: str
    stranger_ca_file: str

    def port(self, scheme: str) -> int:
        return next(p for s, _, p in self.broker.addresses if s == scheme)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("bench-pki")
    ca = trustme.CA(organization_name="TideMQ bench tests")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    server = ca.issue_cert("localhost", "127.0.0.1")
    server.private_key_and_cert_chain_pem.write_to_path(str(d / "server.pem"))
    client = ca.issue_cert("bench-client.example", common_name="bench-client")
    client.private_key_and_cert_chain_pem.write_to_path(str(d / "client.pem"))
    trustme.CA().cert_pem.write_to_path(str(d / "stranger-ca.pem"))
    return {name: str(d / f"{name}.pem") for name in ("ca", "server", "client", "stranger-ca")}


@pytest.fixture
async def tls_broker(pki: dict[str, str]) -> AsyncIterator[TLSBroker]:
    config = Config().with_values(
        {
            "listeners.listen": [
                "tcp://127.0.0.1:0",
                "tls://127.0.0.1:0",
                "ws://127.0.0.1:0/mqtt",
                "wss://127.0.0.1:0/mqtt",
            ],
            "listeners.tls.certfile": pki["server"],
            "listeners.tls.cafile": pki["ca"],
        }
    )
    broker = Broker(config, settings=broker_settings())
    await broker.start()
    try:
        yield TLSBroker(broker, pki["ca"], pki["client"], pki["stranger-ca"])
    finally:
        await broker.stop()


def target(port: int) -> tuple[str, ...]:
    return ("-h", "127.0.0.1", "-p", str(port))
