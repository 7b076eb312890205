"""The contracts the broker depends on, and the ones it offers to plugins. Structural
(``typing.Protocol``): transports and other packages satisfy or use them without importing
the broker, and the broker never imports them (``ConnectedClients`` is what ``BrokerCore``
offers to packages such as ``tidemq.auth``, which may import this module but not the core).
"""

from __future__ import annotations

from typing import Protocol

from .hooks import ClientInfo


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


class ConnectedClients(Protocol):
    """The connected clients, for administrative actions taken outside the broker (a new
    ban disconnects the clients it matches). ``BrokerCore`` satisfies it; the composition
    root hands it to the plugins that need it."""

    def connected_clients(self) -> list[ClientInfo]:
        """A snapshot of the clients whose CONNECT was accepted and that are still
        connected; O(connections), so for occasional sweeps, never per packet."""
        ...

    def disconnect_client(self, client_id: str, reason_code: int, reason: str) -> bool:
        """Disconnect *client_id*: MQTT 5 with DISCONNECT *reason_code* (and *reason* as
        Reason String when configured), MQTT 3 by closing; the will is published. False
        when it is not connected."""
        ...
