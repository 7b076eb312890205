"""The issue's "done when", as a new user does it (README, "Security / production"):
``tidemq passwd -c passwd alice`` (the password typed twice), a config naming the password
file and an ACL file, ``tidemq serve``; then Debian's mosquitto_pub and mosquitto_sub:
the right password works, a wrong one is refused with "not authorized", the ACL holds.
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

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto_pub") is None and os.environ.get("CI") != "true",
    reason="mosquitto-clients not installed (scripts/services installs it)",
)
LISTENING = re.compile(rb"listening on tcp://127\.0\.0\.1:(\d+)")

ACL = """\
# alice owns sensors/; everyone may read public/; nothing else
allow user alice all       sensors/#
allow all        subscribe public/#
deny  all        all       #
"""

CONFIG = """\
[mqtt]
allow_anonymous = false

[auth.password_file]
path = "passwd"

[acl]
file = "acl"

[storage]
backend = "memory"
"""


async def run(*args: str, cwd: Path, stdin: bytes = b"", timeout: float = 15) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # no controlling terminal: getpass reads the pipe
    )
    out, _ = await asyncio.wait_for(proc.communicate(stdin), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[int]:
    """The user's directory after the README's steps, with ``tidemq serve`` running."""
    rc, out = await run(
        sys.executable, "-m", "tidemq", "passwd", "-c", "passwd", "alice",
        cwd=tmp_path, stdin=b"s3cret\ns3cret\n",
    )  # fmt: skip
    assert rc == 0, out
    assert (tmp_path / "passwd").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "passwd").read_text().startswith("alice:$argon2id$")
    (tmp_path / "acl").write_text(ACL)
    (tmp_path / "tidemq.toml").write_text(CONFIG)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tidemq", "serve", "--config", "tidemq.toml",
        "--listen", "tcp://127.0.0.1:0", "--data-dir", "data",
        cwd=tmp_path, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    port = 0
    try:
        while not port:
            line = await asyncio.wait_for(proc.stderr.readline(), 15)
            if not line:
                raise AssertionError("tidemq serve exited before listening")
            if found := LISTENING.search(line):
                port = int(found.group(1))
        yield port
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 10) == 0


@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
async def test_readme_security_walkthrough(secured: int, tmp_path: Path, version: str) -> None:
    port = str(secured)
    common = ("-p", port, "-V", version)
    alice = ("-u", "alice", "-P", "s3cret")
    # The right password works; the subscriber sees alice's reading (stdbuf: mosquitto_sub's
    # stdout is block-buffered when piped; -d prints the SUBACK we wait for).
    sub = await asyncio.create_subprocess_exec(
        "stdbuf", "-oL", "mosquitto_sub", *common, *alice, "-t", "sensors/#",
        "-C", "1", "-v", "-W", "10", "-i", f"watch-{version}", "-d",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert sub.stdout is not None
    while b"SUBACK" not in await asyncio.wait_for(sub.stdout.readline(), 10):
        pass
    rc, out = await run(
        "mosquitto_pub", *common, *alice, "-t", "sensors/temp", "-m", "21", "-q", "1", cwd=tmp_path
    )
    assert rc == 0, out
    rest, _ = await asyncio.wait_for(sub.communicate(), 10)
    assert "sensors/temp 21" in rest.decode()
    # A wrong password and no credentials at all: "not authorized" (3.1.1: "not authorised").
    for credentials in (("-u", "alice", "-P", "wrong"), ()):
        rc, out = await run(
            "mosquitto_pub", *common, *credentials, "-t", "sensors/temp", "-m", "x", cwd=tmp_path
        )
        assert rc != 0
        assert re.search(r"not authori[sz]ed", out, re.IGNORECASE), out
    # The ACL holds: alice may not subscribe outside her rules...
    rc, out = await run(
        "mosquitto_sub", *common, *alice, "-t", "secret/#", "-C", "1", "-W", "5", cwd=tmp_path
    )
    assert "All subscription requests were denied" in out
    # ... nor publish there (MQTT 5 says so in the PUBACK; 3.1.1 drops it silently).
    rc, out = await run(
        "mosquitto_pub", *common, *alice, "-t", "secret/x", "-m", "x", "-q", "1", cwd=tmp_path
    )
    if version == "mqttv5":
        assert "Not authorized" in out, out
