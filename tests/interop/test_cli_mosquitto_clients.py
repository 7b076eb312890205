"""``tidemq serve`` as a user runs it (a subprocess, uvloop when installed), driven by
Debian's ``mosquitto_pub`` / ``mosquitto_sub`` at MQTT 3.1.1 and 5.0.

Readiness is the "listening on" log line, read from the process's stderr; the port is 0.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

HAVE_CLIENTS = shutil.which("mosquitto_pub") is not None and shutil.which("mosquitto_sub")
pytestmark = pytest.mark.skipif(
    not HAVE_CLIENTS and os.environ.get("CI") != "true",
    reason="mosquitto-clients not installed (scripts/services installs it)",
)
LISTENING = re.compile(rb"listening on tcp://127\.0\.0\.1:(\d+)")


class Server:
    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidemq",
        "serve",
        "--listen",
        "tcp://127.0.0.1:0",
        "--data-dir",
        str(tmp_path / "data"),
        "--mqtt.sys-interval",
        "1",
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    port = 0
    try:
        while not port:
            line = await asyncio.wait_for(proc.stderr.readline(), 15)
            if not line:
                raise AssertionError("tidemq serve exited before listening")
            found = LISTENING.search(line)
            if found:
                port = int(found.group(1))
        yield Server(proc, port)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            rc = await asyncio.wait_for(proc.wait(), 10)
            assert rc == 0, "graceful shutdown must exit 0"
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700


async def run(*args: str, timeout: float = 10) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, f"{args[0]} failed: {err.decode()}"
    return out.decode()


async def start_sub(*args: str) -> asyncio.subprocess.Process:
    # -d prints the SUBACK, which tells us the subscription is in place (no sleeping).
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


async def received_lines(proc: asyncio.subprocess.Process) -> list[str]:
    out, _ = await asyncio.wait_for(proc.communicate(), 10)
    debug = ("Client ", "Subscribed ")
    lines = [line for line in out.decode().splitlines() if not line.startswith(debug)]
    return lines


@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
@pytest.mark.parametrize("qos", ["0", "1", "2"])
async def test_pub_sub(server: Server, version: str, qos: str) -> None:
    port = str(server.port)
    sub = await start_sub("-p", port, "-V", version, "-q", qos, "-t", "cli/#", "-C", "1", "-v")
    await run("mosquitto_pub", "-p", port, "-V", version, "-q", qos, "-t", "cli/x", "-m", "hi")
    assert await received_lines(sub) == ["cli/x hi"]


@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
async def test_retained_and_will(server: Server, version: str) -> None:
    port = str(server.port)
    await run(
        "mosquitto_pub", "-p", port, "-V", version, "-r", "-q", "1", "-t", "r/1", "-m", "kept"
    )
    out = await run("mosquitto_sub", "-p", port, "-V", version, "-t", "r/#", "-C", "1", "-v")
    assert out.splitlines() == ["r/1 kept"]
    # Clear it with an empty retained message: a new subscriber gets nothing (-W 1 times out).
    await run("mosquitto_pub", "-p", port, "-V", version, "-r", "-t", "r/1", "-n")
    proc = await asyncio.create_subprocess_exec(
        "mosquitto_sub",
        "-p",
        port,
        "-V",
        version,
        "-t",
        "r/#",
        "-C",
        "1",
        "-W",
        "1",
        stdout=asyncio.subprocess.PIPE,
    )
    out_b, _ = await asyncio.wait_for(proc.communicate(), 10)
    assert out_b == b""
    # A client killed without DISCONNECT has its will published.
    watcher = await start_sub("-p", port, "-V", version, "-t", "will/t", "-C", "1", "-v")
    victim = await start_sub(
        "-p", port, "-V", version, "-t", "x", "--will-topic", "will/t", "--will-payload", "bye"
    )
    victim.kill()
    await victim.wait()
    assert await received_lines(watcher) == ["will/t bye"]


async def test_sys_version(server: Server) -> None:
    out = await run(
        "mosquitto_sub", "-p", str(server.port), "-t", "$SYS/broker/version", "-C", "1", "-v"
    )
    assert out.startswith("$SYS/broker/version tidemq ")
