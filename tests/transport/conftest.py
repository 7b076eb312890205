"""Fixtures for the listener tests: certificates made by trustme, and brokers with tcp, tls,
ws and wss listeners on 127.0.0.1 port 0 (real ports from ``Broker.addresses``).

``pki`` writes one CA, a server certificate for ``localhost``/``127.0.0.1``, a client
certificate ``device-1`` signed by that CA and one signed by a stranger CA. ``start`` runs
a broker with any listener URLs and ``[listeners]`` options; ``listeners`` is the usual
one: all four schemes at once, client certificates optional.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tidemq.app import Broker
from tidemq.broker import Hooks
from tidemq.config import Config
from tidemq.testing import broker_settings

CLIENT_CN = "device-1"


@dataclass
class PKI:
    ca: trustme.CA
    ca_file: str
    server_file: str  # key + certificate chain, PEM
    client_file: str  # device-1, signed by ca
    stranger_file: str  # a client certificate from another CA
    dir: Path

    def client_context(self, cert: str | None = None) -> ssl.SSLContext:
        """A client context trusting our CA, presenting *cert* (a key+chain PEM) if given."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if cert is not None:
            ctx.load_cert_chain(cert)
        return ctx


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA(organization_name="TideMQ tests")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    server = ca.issue_cert("localhost", "127.0.0.1", common_name="localhost")
    server.private_key_and_cert_chain_pem.write_to_path(str(d / "server.pem"))
    client = ca.issue_cert(
        "device-1.example",
        common_name=CLIENT_CN,
        organization_name="Acme",
        organization_unit_name="Sensors",
    )
    client.private_key_and_cert_chain_pem.write_to_path(str(d / "client.pem"))
    stranger = trustme.CA().issue_cert("intruder.example", common_name="intruder")
    stranger.private_key_and_cert_chain_pem.write_to_path(str(d / "stranger.pem"))
    return PKI(
        ca,
        str(d / "ca.pem"),
        str(d / "server.pem"),
        str(d / "client.pem"),
        str(d / "stranger.pem"),
        d,
    )


class Running:
    """A started broker with helpers to find its listeners."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    @property
    def hooks(self) -> Hooks:
        return self.broker.hooks

    def port(self, scheme_or_name: str) -> int:
        """The port of the listener with this name, or of the first with this scheme."""
        for listener in self.broker.listeners:
            if listener.name == scheme_or_name:
                return listener.port
        for scheme, _, port in self.broker.addresses:
            if scheme == scheme_or_name:
                return port
        raise KeyError(scheme_or_name)


Start = Callable[..., AbstractAsyncContextManager[Running]]


@pytest.fixture
def start(pki: PKI) -> Start:
    """``async with start(urls, **{"listeners.tls.cafile": ...}) as running``; the server
    certificate is preset, so ``tls://`` and ``wss://`` work without more."""

    @asynccontextmanager
    async def run(
        urls: Iterable[str], values: Mapping[str, object] | None = None, **settings: object
    ) -> AsyncIterator[Running]:
        config = Config().with_values(
            {
                "listeners.listen": list(urls),
                "listeners.tls.certfile": pki.server_file,
                **(values or {}),
            }
        )
        broker = Broker(config, settings=broker_settings(**settings))
        await broker.start()
        try:
            yield Running(broker)
        finally:
            await broker.stop()

    return run


ALL_FOUR = (
    "tcp://127.0.0.1:0",
    "tls://127.0.0.1:0",
    "ws://127.0.0.1:0/mqtt",
    "wss://127.0.0.1:0/mqtt",
)


@pytest.fixture
async def listeners(start: Start, pki: PKI) -> AsyncIterator[Running]:
    """tcp, tls, ws and wss at once; client certificates asked for but optional."""
    async with start(ALL_FOUR, {"listeners.tls.cafile": pki.ca_file}) as running:
        yield running


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # paho's WebSocket handshake does str(bytearray), which -bb turns into an error
    # (paho/mqtt/client.py, _WebsocketWrapper._do_handshake).
    paho_ws = pytest.mark.filterwarnings("ignore:str\\(\\) on a bytearray instance:BytesWarning")
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(paho_ws)
