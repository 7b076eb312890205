"""The password file: parsing, rewriting, reloading, and its authenticator."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tidemq.auth import _files
from tidemq.auth.api import ClientIdentity, Credentials, Verdict
from tidemq.auth.password_file import (
    PasswordEntries,
    PasswordFileAuthenticator,
    PasswordFileError,
    check_username,
    format_password_file,
    parse_password_file,
    write_password_file,
)
from tidemq.auth.passwords import hash_password


def test_parse_and_format_keep_comments_and_order() -> None:
    text = "# users\nalice:$7$101$a$b\n\n  # bob next\nbob:$2b$12$x\n"
    entries = parse_password_file(text)
    assert entries.users == {"alice": "$7$101$a$b", "bob": "$2b$12$x"}
    assert format_password_file(entries) == text.replace("  # bob", "  # bob")
    users = dict(entries.users)
    del users["alice"]
    users["carol"] = "$2b$12$y"
    again = format_password_file(PasswordEntries(users, entries.lines))
    assert again == "# users\n\n  # bob next\nbob:$2b$12$x\ncarol:$2b$12$y\n"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("alice\n", r"f:1: expected USERNAME:HASH"),
        ("# c\n:hash\n", r"f:2: expected USERNAME:HASH"),
        ("a:x\na:y\n", r"f:2: user 'a' is listed twice"),
    ],
)
def test_parse_errors_name_the_line(text: str, match: str) -> None:
    with pytest.raises(PasswordFileError, match=match):
        parse_password_file(text, "f")


def test_plain_text_entries_are_kept_but_never_match(caplog: pytest.LogCaptureFixture) -> None:
    entries = parse_password_file("old:plaintext\n", "f")
    assert entries.users == {"old": "plaintext"}
    assert "tidemq passwd -U" in caplog.text


@pytest.mark.parametrize("name", ["", "a:b", "a\nb"])
def test_bad_usernames(name: str) -> None:
    with pytest.raises(PasswordFileError):
        check_username(name)


def test_atomic_write_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("x:y\n")
    os.chmod(path, 0o644)
    write_password_file(str(path), PasswordEntries({"a": "$2b$h"}, ()))
    assert path.read_text() == "a:$2b$h\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["pw"]  # no temporary file left


def _creds(username: str | None, password: bytes | None) -> Credentials:
    client = ClientIdentity(client_id="c", username=username, peer_host="127.0.0.1")
    return Credentials(client=client, password=password)


async def test_authenticator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_files, "CHECK_INTERVAL", 0.0)
    path = tmp_path / "pw"
    path.write_text(f"alice:{hash_password('a', 'pbkdf2')}\n")
    source = PasswordFileAuthenticator(str(path))
    await source.open()
    assert (await source.authenticate(_creds("alice", b"a"))).verdict is Verdict.ALLOW
    assert (await source.authenticate(_creds("alice", b"b"))).verdict is Verdict.DENY
    assert (await source.authenticate(_creds("alice", None))).verdict is Verdict.DENY
    assert (await source.authenticate(_creds("bob", b"a"))).verdict is Verdict.IGNORE
    assert (await source.authenticate(_creds(None, None))).verdict is Verdict.IGNORE
    # Edited in place: seen at the next CONNECT.
    path.write_text(f"bob:{hash_password('b', 'pbkdf2')}\n")
    assert (await source.authenticate(_creds("bob", b"b"))).verdict is Verdict.ALLOW
    assert (await source.authenticate(_creds("alice", b"a"))).verdict is Verdict.IGNORE
    # A broken edit keeps the last good file; removing the file too.
    path.write_text("broken\n")
    assert (await source.authenticate(_creds("bob", b"b"))).verdict is Verdict.ALLOW
    path.unlink()
    assert (await source.authenticate(_creds("bob", b"b"))).verdict is Verdict.ALLOW
    assert source.reload() is False
