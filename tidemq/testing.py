"""A pytest plugin for users' own tests: an in-process TideMQ broker on a free port.

Installed with TideMQ, it registers itself through the ``pytest11`` entry point (or name it
explicitly with ``pytest -p tidemq.testing``), then::

    async def test_roundtrip(mqtt_broker):
        host, port = mqtt_broker.host, mqtt_broker.port
        ...

The fixture needs an asyncio-capable pytest (pytest-asyncio in auto mode, or mark the test).
The broker listens on 127.0.0.1 port 0; readiness is awaited, never slept for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tidemq.app import Broker
from tidemq.broker import BrokerSettings

try:
    import pytest_asyncio

    _fixture = pytest_asyncio.fixture
except ImportError:  # pragma: no cover - plain pytest without asyncio support
    _fixture = pytest.fixture  # type: ignore[assignment]


class RunningBroker:
    """What the ``mqtt_broker`` fixture yields."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.host = "127.0.0.1"
        self.port = broker.port

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def broker_settings(**overrides: object) -> BrokerSettings:
    """Settings tuned for tests: short $SYS interval off, everything else default."""
    values: dict[str, object] = {"sys_interval": 0.0}
    values.update(overrides)
    return BrokerSettings(**values)  # type: ignore[arg-type]


@_fixture
async def mqtt_broker() -> AsyncIterator[RunningBroker]:
    """An in-process TideMQ broker on 127.0.0.1 with a free port."""
    broker = Broker(listen=["tcp://127.0.0.1:0"], settings=broker_settings())
    await broker.start()
    try:
        yield RunningBroker(broker)
    finally:
        await broker.stop()
