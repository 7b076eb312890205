"""Shared fixtures: an in-process broker on 127.0.0.1 port 0, awaited, never slept for.

Override broker settings per test with ``@pytest.mark.broker_settings(max_inflight=2)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tidemq.app import Broker
from tidemq.testing import RunningBroker, broker_settings


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "broker_settings(**kw): BrokerSettings overrides for the broker fixture"
    )


@pytest.fixture
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[RunningBroker]:
    marker = request.node.get_closest_marker("broker_settings")
    overrides = dict(marker.kwargs) if marker else {}
    instance = Broker(listen=["tcp://127.0.0.1:0"], settings=broker_settings(**overrides))
    await instance.start()
    try:
        yield RunningBroker(instance)
    finally:
        await instance.stop()
