"""Fixtures shared by the broker behaviour tests: paho and raw clients closed at teardown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests import mqttbytes as mb
from tests.helpers.paho import V311, Paho, connect
from tests.helpers.raw import RawClient
from tidemq.testing import RunningBroker

Make = Callable[..., Awaitable[Paho]]
MakeRaw = Callable[..., Awaitable[RawClient]]


@pytest.fixture
async def clients(broker: RunningBroker) -> AsyncIterator[Make]:
    made: list[Paho] = []

    async def make(client_id: str = "", protocol: int = V311, **kwargs: Any) -> Paho:
        c = await connect(broker.port, client_id, protocol=protocol, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.client.disconnect()
        await asyncio.to_thread(c.client.loop_stop)


@pytest.fixture
async def raw(broker: RunningBroker) -> AsyncIterator[MakeRaw]:
    made: list[RawClient] = []

    async def make(client_id: str, proto_ver: int = 4) -> RawClient:
        r = await RawClient.connect(broker.port)
        made.append(r)
        await r.send(mb.gen_connect(client_id, proto_ver=proto_ver))
        ack = await r.read_packet()
        assert ack[0] == 0x20, ack
        assert ack[3] == 0, ack
        return r

    yield make
    for r in made:
        await r.close()
