"""TCP listeners: ``tcp://HOST:PORT`` on ``loop.create_server`` with ``StreamConnection``."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from .interfaces import HandlerFactory
from .stream import StreamConnection, WriteBatcher

log = logging.getLogger("tidemq.transport")

DEFAULT_PORTS = {"tcp": 1883, "tls": 8883, "ws": 8083, "wss": 8084}
# Listen backlog: large enough for connection storms (Mosquitto uses 100; EMQX 1024).
DEFAULT_BACKLOG = 1024


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    """A parsed listener URL such as ``tcp://0.0.0.0:1883``."""

    scheme: str
    host: str
    port: int
    path: str = ""
    name: str = ""

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"


def parse_listen_url(url: str, name: str = "") -> ListenerSpec:
    """Parse ``scheme://host:port[/path]``; raises ``ValueError`` on anything else."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"unsupported listener scheme in {url!r} (use tcp://HOST:PORT)")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port in listener {url!r}") from exc
    host = parts.hostname or "0.0.0.0"  # noqa: S104 - a broker listens on all interfaces by default
    path = parts.path or ("/mqtt" if scheme in ("ws", "wss") else "")
    return ListenerSpec(
        scheme,
        host,
        DEFAULT_PORTS[scheme] if port is None else port,
        path,
        name or f"{scheme}:{DEFAULT_PORTS[scheme] if port is None else port}",
    )


class Listener:
    """A started listener: its spec, the real bound addresses, and its server."""

    def __init__(self, spec: ListenerSpec, server: asyncio.Server) -> None:
        self.spec = spec
        self.server = server

    @property
    def addresses(self) -> list[tuple[str, int]]:
        out = []
        for sock in self.server.sockets:
            addr = sock.getsockname()
            out.append((str(addr[0]), int(addr[1])))
        return out

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    def close(self) -> None:
        self.server.close()

    async def wait_closed(self) -> None:
        await self.server.wait_closed()


async def start_listener(
    spec: ListenerSpec, factory: HandlerFactory, batcher: WriteBatcher
) -> Listener:
    """Bind *spec* (port 0 picks a free port) and serve connections through *factory*."""
    if spec.scheme != "tcp":
        raise ValueError(f"{spec.scheme}:// listeners are not available yet")
    loop = asyncio.get_running_loop()
    name = spec.name
    server = await loop.create_server(
        lambda: StreamConnection(factory, batcher, name),
        host=spec.host,
        port=spec.port,
        backlog=DEFAULT_BACKLOG,
        reuse_address=True,
    )
    listener = Listener(spec, server)
    return listener
