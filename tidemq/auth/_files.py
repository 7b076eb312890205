"""Files that are read at start and again when they change (password file, ACL file)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger("tidemq.auth")

T = TypeVar("T")

#: How often ``WatchedFile.current`` looks at the file's modification time.
CHECK_INTERVAL = 1.0


class WatchedFile(Generic[T]):
    """A file parsed into a ``T``, parsed again when its size, mtime or inode change
    (looked at no more than once per ``CHECK_INTERVAL`` seconds) or on ``reload()``.

    A file that fails to parse at the start raises; a later failure is logged and the last
    good content stays in force, so a half-written edit never locks every client out.
    """

    def __init__(self, path: str, parse: Callable[[str, str], T], what: str) -> None:
        self.path = path
        self.what = what
        self._parse = parse
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self.listeners: list[Callable[[], None]] = []
        self.value: T = self._load()

    def _load(self) -> T:
        with open(self.path, encoding="utf-8") as file:
            stamp = self._stat(file.fileno())
            text = file.read()
        value = self._parse(text, self.path)
        self._stamp = stamp
        return value

    @staticmethod
    def _stat(fd_or_path: int | str) -> tuple[int, int, int]:
        st = os.stat(fd_or_path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def current(self) -> T:
        """The parsed content, re-read first when the file changed."""
        now = time.monotonic()
        if now - self._checked >= CHECK_INTERVAL:
            self._checked = now
            try:
                changed = self._stat(self.path) != self._stamp
            except OSError:
                changed = False  # being replaced: keep the last good content
            if changed:
                self.reload()
        return self.value

    def reload(self) -> bool:
        """Read the file again now; returns whether it loaded (else the old content stays)."""
        try:
            value = self._load()
        except (OSError, UnicodeError, ValueError) as exc:
            log.error("%s %s not reloaded, keeping the previous one: %s", self.what, self.path, exc)
            return False
        self.value = value
        log.info("%s %s loaded", self.what, self.path)
        for listener in self.listeners:
            listener()
        return True
