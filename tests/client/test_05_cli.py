"""``tidemq pub`` / ``tidemq sub`` as users run them (``python -m tidemq``, subprocesses),
against TideMQ and Mosquitto. ``sub -d`` reports the SUBACK on stderr: that is the
readiness signal, never a sleep."""

from __future__ import annotations

import asyncio
import sys

import pytest

from .conftest import MosquittoServer, TideMQServer, free_port

WAIT = 15.0
Server = TideMQServer | MosquittoServer


async def run(*args: str, stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidemq",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), WAIT)
    assert proc.returncode is not None
    return proc.returncode, out, err


async def start_sub(*args: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidemq",
        "sub",
        "-d",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    while True:
        line = await asyncio.wait_for(proc.stderr.readline(), WAIT)
        assert line, "tidemq sub exited before subscribing"
        if b"SUBACK" in line:
            return proc


@pytest.mark.parametrize("version", ["5", "311"])
async def test_pub_and_sub(server: Server, version: str) -> None:
    port = str(server.port)
    sub = await start_sub(
        "-h", "127.0.0.1", "-p", port, "-V", version, "-t", "cli/#", "-v", "-q", "1", "-C", "5"
    )
    base = ("pub", "-h", "127.0.0.1", "-p", port, "-V", version)
    assert (await run(*base, "-t", "cli/m", "-m", "hello", "-q", "1"))[0] == 0
    assert (await run(*base, "-t", "cli/l", "-l", "-q", "2", stdin=b"one\n\ntwo\n"))[0] == 0
    assert (await run(*base, "-t", "cli/n", "-n"))[0] == 0
    assert (await run(*base, "-t", "cli/s", "-s", stdin=b"all\nof it"))[0] == 0
    out, _ = await asyncio.wait_for(sub.communicate(), WAIT)
    assert sub.returncode == 0
    assert (
        out.splitlines()
        == [
            b"cli/m hello",
            b"cli/l one",
            b"cli/l two",
            b"cli/n (null)",
            b"cli/s all",
            b"of it",
        ][: len(out.splitlines())]
    )
    assert len(out.splitlines()) == 6  # -C 5 messages, the last one spans two lines


async def test_sub_timeout_and_retained(tidemq: TideMQServer) -> None:
    port = str(tidemq.port)
    code, _, _ = await run("pub", "-p", port, "-h", "127.0.0.1", "-t", "ret", "-m", "r", "-r")
    assert code == 0
    code, out, _ = await run("sub", "-p", port, "-h", "127.0.0.1", "-t", "ret", "-C", "1")
    assert (code, out) == (0, b"r\n")
    code, out, err = await run(
        "sub", "-p", port, "-h", "127.0.0.1", "-t", "ret", "-R", "-W", "0.3", "-V", "5"
    )
    assert code == 27  # as mosquitto_sub: MOSQ_ERR_TIMEOUT
    assert out == b""
    assert b"Timed out" in err


async def test_url_option_and_credentials(tidemq: TideMQServer) -> None:
    sub = await start_sub("-L", f"mqtt://u:p@127.0.0.1:{tidemq.port}/url/t", "-C", "1")
    code, _, _ = await run("pub", "-L", f"mqtt://127.0.0.1:{tidemq.port}/url/t", "-m", "via url")
    assert code == 0
    out, _ = await asyncio.wait_for(sub.communicate(), WAIT)
    assert out == b"via url\n"


async def test_errors_are_reported_with_exit_code_1() -> None:
    code, out, err = await run("pub", "-p", str(free_port()), "-t", "x", "-m", "y")
    assert code == 1
    assert out == b""
    assert err.startswith(b"Error: cannot connect")
    code, _, err = await run("pub", "-p", "1", "-t", "x")
    assert code == 1
    assert b"Error:" in err
