"""The contracts the broker depends on. Structural (``typing.Protocol``): transports and
other packages satisfy them without importing the broker, and the broker never imports them.
"""

from __future__ import annotations

from typing import Protocol


class Link(Protocol):
    """One client connection as the broker sees it (a transport's connection object).

    A TLS link may also carry ``cert_common_name`` (the verified client certificate's CN)
    and ``cert_identity`` (the username its listener's ``cert_as_username`` derives from
    the certificate), and ``cert_identity_required`` (that listener names users by
    certificate); the handler reads them with ``getattr``, so other links need none.
    """

    listener: str
    peer: tuple[str, int] | None
    writing_paused: bool

    def write(self, data: bytes) -> None:
        """Queue bytes; they are flushed once per event-loop pass."""

    def close(self) -> None:
        """Flush and close gracefully."""

    def abort(self) -> None:
        """Close at once, dropping anything queued."""

    def is_closing(self) -> bool: ...

    def buffered_bytes(self) -> int:
        """Bytes accepted by ``write`` but not yet handed to the kernel."""
        ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...
