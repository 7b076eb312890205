"""The password file: ``username:hash`` lines, as Mosquitto's ``password_file``.

::

    # comments and blank lines are ignored
    alice:$argon2id$v=19$m=19456,t=2,p=1$...
    bob:$7$101$gFCPWeB9KrO/BW+C$InYr...      (written by mosquitto_passwd)

A username is everything before the first ``:`` and the hash everything after it; see
``tidemq.auth.passwords`` for the hashes. ``tidemq passwd`` writes the file (atomically,
mode 0600); the broker reads it again when it changes and on SIGHUP.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass

from ._files import WatchedFile
from .api import IGNORE, Authenticator, AuthOutcome, Credentials, Verdict
from .passwords import identify, verify_password_async

__all__ = [
    "PasswordEntries",
    "PasswordFileAuthenticator",
    "PasswordFileError",
    "check_username",
    "format_password_file",
    "parse_password_file",
    "write_password_file",
]

log = logging.getLogger("tidemq.auth")


class PasswordFileError(ValueError):
    """A password file line that cannot be used."""


@dataclass(frozen=True, slots=True)
class PasswordEntries:
    """A parsed password file: the users in file order, and the lines kept as they were
    (comments, blank lines) so that ``tidemq passwd`` can rewrite the file faithfully."""

    users: dict[str, str]
    lines: tuple[str, ...]  # every line; a user's line is "\0USERNAME"


def check_username(username: str) -> None:
    """Raise ``PasswordFileError`` for a username the file cannot hold."""
    if not username:
        raise PasswordFileError("empty username")
    if ":" in username or any(c in username for c in "\r\n\0"):
        raise PasswordFileError(f"username {username!r} may not contain ':' or line breaks")


def parse_password_file(text: str, path: str = "password file") -> PasswordEntries:
    """Parse the file's text.

    Raises:
        PasswordFileError: a line without ``:``, or a user listed twice (with the path
            and line number).
    """
    users: dict[str, str] = {}
    lines: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            lines.append(raw)
            continue
        username, sep, encoded = line.partition(":")
        if not sep or not username:
            raise PasswordFileError(f"{path}:{number}: expected USERNAME:HASH")
        if username in users:
            raise PasswordFileError(f"{path}:{number}: user {username!r} is listed twice")
        if identify(encoded) is None:
            # Kept (tidemq passwd -U hashes it), but no password ever matches it.
            log.warning(
                "%s:%d: user %r has no password hash we know; it cannot log in "
                "(plain text? run tidemq passwd -U)",
                path,
                number,
                username,
            )
        users[username] = encoded
        lines.append("\0" + username)
    return PasswordEntries(users, tuple(lines))


def format_password_file(entries: PasswordEntries) -> str:
    out: list[str] = []
    seen: set[str] = set()
    for line in entries.lines:
        if line.startswith("\0"):
            username = line[1:]
            if username in entries.users:
                out.append(f"{username}:{entries.users[username]}")
                seen.add(username)
        else:
            out.append(line)
    out += [f"{u}:{h}" for u, h in entries.users.items() if u not in seen]
    return "".join(line + "\n" for line in out)


def write_password_file(path: str, entries: PasswordEntries) -> None:
    """Replace *path* atomically (a temporary file in the same directory, fsync, rename)
    with mode 0600: readers see the old file or the new one, never half of one."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tidemq-passwd-", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(format_password_file(entries))
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


class PasswordFileAuthenticator(Authenticator):
    """Answers for the users in the file: ALLOW for the right password, DENY for a wrong
    or missing one; IGNORE for a username the file does not list (the next source may
    know it) and for clients without a username."""

    name = "password_file"
    provides_acl = False

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: WatchedFile[PasswordEntries] | None = None

    async def open(self) -> None:
        self._file = WatchedFile(self.path, parse_password_file, "password file")
        log.info("password file %s: %d users", self.path, len(self._file.value.users))

    def reload(self) -> bool:
        return self._file.reload() if self._file is not None else False

    async def authenticate(self, credentials: Credentials) -> AuthOutcome:
        username = credentials.client.username
        if username is None or self._file is None:
            return IGNORE
        encoded = self._file.current().users.get(username)
        if encoded is None:
            return IGNORE
        if credentials.password is None:
            return AuthOutcome(verdict=Verdict.DENY, reason="no password")
        if await verify_password_async(credentials.password, encoded):
            return AuthOutcome(verdict=Verdict.ALLOW)
        return AuthOutcome(verdict=Verdict.DENY, reason="wrong password")
