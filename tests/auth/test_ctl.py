"""``tidemq ctl users`` and ``tidemq ctl ban``: against the configured storage, resolved as
``tidemq serve`` resolves it, and beside a running ``tidemq serve`` on the same data
directory (SQLite in WAL mode), whose clients see the changes within the documented
intervals."""

from __future__ import annotations

import asyncio
import io
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.auth.hookup import Clients
from tests.helpers.paho import V5, V311
from tidemq.cli import main
from tidemq.ctl import parse_duration
from tidemq.storage.sqlite import SQLiteStorage


def test_parse_duration() -> None:
    assert parse_duration("90") == 90
    assert parse_duration("90s") == 90
    assert parse_duration("15m") == 900
    assert parse_duration("1h30m") == 5400
    assert parse_duration("2d") == 172_800
    assert parse_duration("1w") == 604_800
    assert parse_duration("0.5h") == 1800
    for bad in ("", "h", "1y", "-5m", "0", "1h junk"):
        with pytest.raises(ValueError, match="bad duration"):
            parse_duration(bad)


def ctl(capsys: pytest.CaptureFixture[str], data: Path, *args: str) -> tuple[int, str, str]:
    rc = main(["ctl", *args, "--data-dir", str(data)])
    out, err = capsys.readouterr()
    return rc, out, err


async def stored(data: Path) -> SQLiteStorage:
    storage = SQLiteStorage(data)
    storage.shared = True
    await storage.open()
    return storage


def test_users(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert ctl(capsys, data, "users", "list") == (0, "", "")
    rc, out, _ = ctl(capsys, data, "users", "add", "alice", "--password", "pw1", "--superuser")
    assert (rc, out) == (0, "added user alice (superuser)\n")
    rc, _, err = ctl(capsys, data, "users", "add", "alice", "--password", "x")
    assert rc == 1
    assert "exists" in err
    rc, out, _ = ctl(
        capsys, data, "users", "add", "bob", "--password", "pw2", "--algorithm", "pbkdf2"
    )
    assert rc == 0
    rc, out, _ = ctl(capsys, data, "users", "list")
    assert re.fullmatch(r"alice\tsuperuser\t\S+Z\nbob\t-\t\S+Z\n", out), out
    assert (
        ctl(capsys, data, "users", "passwd", "bob", "--password", "pw3", "--algorithm", "bcrypt")[0]
        == 0
    )
    assert ctl(capsys, data, "users", "set", "alice", "--no-superuser")[0] == 0
    assert ctl(capsys, data, "users", "passwd", "carol", "--password", "x")[0] == 1
    assert ctl(capsys, data, "users", "delete", "carol")[0] == 1

    async def check() -> None:
        from tidemq.auth.passwords import verify_password

        storage = await stored(data)
        try:
            alice, bob = await storage.list_users()
            assert (alice.username, alice.superuser) == ("alice", False)
            assert alice.password_hash.startswith("$argon2id$")
            assert verify_password("pw1", alice.password_hash)
            assert bob.password_hash.startswith("$2b$")
            assert verify_password("pw3", bob.password_hash)
            assert bob.updated_at is not None
        finally:
            await storage.close()

    asyncio.run(check())
    assert ctl(capsys, data, "users", "delete", "bob") == (0, "deleted user bob\n", "")
    assert ctl(capsys, data, "users", "list")[1].startswith("alice\t-\t")


def test_password_from_stdin(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("from-stdin\n"))
    assert ctl(capsys, tmp_path, "users", "add", "dave")[0] == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    rc, _, err = ctl(capsys, tmp_path, "users", "add", "erin")
    assert rc == 2
    assert "empty" in err

    async def check() -> None:
        from tidemq.auth.passwords import verify_password

        storage = await stored(tmp_path)
        try:
            dave = await storage.get_user("dave")
            assert dave is not None
            assert verify_password("from-stdin", dave.password_hash)
            assert await storage.get_user("erin") is None
        finally:
            await storage.close()

    asyncio.run(check())


def test_bans(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = tmp_path / "data"
    rc, out, _ = ctl(
        capsys, data, "ban", "add", "address", "10.1.2.3/8", "--duration", "1h", "--reason", "scan"
    )
    assert rc == 0
    assert out.startswith("banned address 10.0.0.0/8 until ")
    assert ctl(capsys, data, "ban", "add", "clientid", "evil")[0] == 0
    assert ctl(capsys, data, "ban", "add", "username", "mallory", "--duration", "2d")[0] == 0
    rc, out, _ = ctl(capsys, data, "ban", "list")
    lines = out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("address\t10.0.0.0/8\tuntil 20")
    assert lines[0].endswith("\tby ctl\tscan")
    assert lines[1] == "clientid\tevil\tuntil forever\tby ctl\t"
    rc, _, err = ctl(capsys, data, "ban", "add", "address", "example.com")
    assert rc == 2
    assert "not an IP address" in err
    assert ctl(capsys, data, "ban", "add", "clientid", "x", "--duration", "soon")[0] == 2
    # Deleting normalises the address as adding did.
    assert ctl(capsys, data, "ban", "delete", "address", "10.9.9.9/8")[0] == 0
    assert ctl(capsys, data, "ban", "delete", "address", "10.9.9.9/8")[0] == 1
    assert len(ctl(capsys, data, "ban", "list")[1].splitlines()) == 2

    async def expire_one() -> None:
        from dataclasses import replace

        storage = await stored(data)
        try:
            ban = next(b for b in await storage.list_bans() if b.value == "mallory")
            await storage.put_ban(replace(ban, until=time.time() - 1))
        finally:
            await storage.close()

    asyncio.run(expire_one())
    assert ctl(capsys, data, "ban", "list")[1].splitlines() == [
        "clientid\tevil\tuntil forever\tby ctl\t"
    ]


def test_config_resolution_and_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "tidemq.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path / "from-file"}"\n')
    monkeypatch.setenv("TIDEMQ_CONFIG", str(config))
    assert main(["ctl", "users", "add", "f", "--password", "p"]) == 0
    assert (tmp_path / "from-file" / "tidemq.db").exists()
    assert main(["ctl", "users", "list", "--set", "storage.backend=memory"]) == 1
    assert "memory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse checks --set values
        main(["ctl", "users", "list", "--set", "storage.backend=nope"])
    assert exit_info.value.code == 2
    capsys.readouterr()
    monkeypatch.setenv("TIDEMQ_STORAGE_BACKEND", "redis")
    monkeypatch.setenv("TIDEMQ_STORAGE_URL", "redis://127.0.0.1:1/0")  # nothing listens
    assert main(["ctl", "ban", "list"]) == 1
    assert "cannot open storage (redis)" in capsys.readouterr().err


# --- beside a running `tidemq serve` ---------------------------------------------------------

LISTENING = re.compile(rb"listening on tcp://127\.0\.0\.1:(\d+)")
REFRESH = 0.2  # bans.refresh_interval and auth.builtin.cache_ttl of the served broker


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    data = tmp_path / "data"
    config = tmp_path / "tidemq.toml"
    config.write_text(
        f'[node]\ndata_dir = "{data}"\n'
        "[mqtt]\nallow_anonymous = false\n"
        '[auth]\nchain = ["builtin"]\n'
        f"[auth.builtin]\ncache_ttl = {REFRESH}\n"
        f"[bans]\nrefresh_interval = {REFRESH}\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidemq",
        "serve",
        "--config",
        str(config),
        "--listen",
        "tcp://127.0.0.1:0",
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
        yield port, config
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            rc = await asyncio.wait_for(proc.wait(), 10)
            assert rc == 0, "graceful shutdown must exit 0"


async def run_ctl(config: Path, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidemq",
        "ctl",
        *args,
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def eventually_refused(clients: Clients, client_id: str, protocol: int, **kw: object) -> int:
    """Connect until refused; the change must land within a few refresh intervals."""
    deadline = time.monotonic() + 20 * REFRESH + 5
    while True:
        code = await clients.refused(client_id, protocol, **kw)  # type: ignore[arg-type]
        if code != 0 or time.monotonic() > deadline:
            return code
        await asyncio.sleep(REFRESH / 2)


@pytest.mark.timeout(90)
async def test_ctl_beside_a_running_broker(served: tuple[int, Path]) -> None:
    port, config = served
    clients = Clients(port)
    try:
        # No user yet: refused (the broker is not anonymous).
        assert await clients.refused("c1", V5, username="alice", password="pw") == 0x87
        # ctl writes while the broker holds the database.
        await run_ctl(config, "users", "add", "alice", "--password", "pw")
        assert "alice" in await run_ctl(config, "users", "list")
        ok = await clients.connect("c1", V311, username="alice", password="pw")
        await clients.stop(ok)
        # A changed password reaches the broker within auth.builtin.cache_ttl.
        await run_ctl(config, "users", "passwd", "alice", "--password", "new")
        assert await eventually_refused(clients, "c1", V5, username="alice", password="pw") == 0x87
        await clients.stop(await clients.connect("c1", V5, username="alice", password="new"))
        # A ban reaches it within bans.refresh_interval: MQTT 5 0x8A, 3.1.1 5 (paho: 0x87).
        await run_ctl(config, "ban", "add", "clientid", "c1", "--reason", "test")
        assert await eventually_refused(clients, "c1", V5, username="alice", password="new") == 0x8A
        assert await clients.refused("c1", V311, username="alice", password="new") == 0x87
        await run_ctl(config, "ban", "delete", "clientid", "c1")
        deadline = time.monotonic() + 20 * REFRESH + 5
        while True:  # lifted within the interval too
            code = await clients.refused("c1", V5, username="alice", password="new")
            if code == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(REFRESH / 2)
        assert code == 0
    finally:
        await clients.close()
