"""Shared by the tests of tidemq.auth's plugin and sources: a broker started from a config
(so the auth plugin is built and installed the way ``tidemq serve`` does it), and paho
clients stopped at teardown."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import pytest

from tests.helpers.paho import V311, Paho, connect
from tidemq.app import Broker
from tidemq.config import Config

StartBroker = Callable[..., Awaitable[Broker]]
MakeClient = Callable[..., Awaitable[Paho]]


def config_with(values: Mapping[str, object]) -> Config:
    base = {"mqtt.sys_interval": 0, "storage.backend": "memory"}
    return Config().with_values({**base, **values})


@pytest.fixture
async def start_broker() -> AsyncIterator[StartBroker]:
    """``await start_broker({"acl.file": path, ...})``: a started broker on a free port."""
    started: list[Broker] = []

    async def start(values: Mapping[str, object] = {}, **kwargs: Any) -> Broker:
        broker = Broker(config_with(values), listen=["tcp://127.0.0.1:0"], **kwargs)
        await broker.start()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        await broker.stop()


@pytest.fixture
async def mqtt() -> AsyncIterator[MakeClient]:
    """``await mqtt(port, "id", protocol=V5, username=..., password=..., expect_rc=...)``."""
    made: list[Paho] = []

    async def make(port: int, client_id: str = "", protocol: int = V311, **kwargs: Any) -> Paho:
        client = await connect(port, client_id, protocol=protocol, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.client.disconnect()
        await asyncio.to_thread(client.client.loop_stop)


# paho 2 reports an MQTT 3.1.1 CONNACK return code as the matching MQTT 5 reason code.
_PAHO_AS_V3 = {0x84: 1, 0x85: 2, 0x88: 3, 0x86: 4, 0x87: 5}


async def refused(port: int, protocol: int, **kwargs: Any) -> int:
    """The CONNACK code a refused client gets, as its protocol version spells it (3.1.1:
    a return code, 5 Not authorized; 5.0: a reason code, 0x87); the client is stopped."""
    client = await connect(port, "", protocol=protocol, expect_rc=None, **kwargs)
    try:
        _, rc, _ = await asyncio.to_thread(client.connack.get, True, 5)
    finally:
        client.client._reconnect_on_failure = False
        client.client.disconnect()
        await asyncio.to_thread(client.client.loop_stop)
    return rc if protocol == 5 else _PAHO_AS_V3.get(rc, rc)


def capture_puback(client: Paho) -> queue.Queue[int]:
    """Record the reason code of each PUBACK/PUBCOMP *client* gets from now on (paho
    reports QoS 0 messages too, as sent: those are left out). paho's network thread may
    report a message before ``publish`` has returned its id here, so a report for an id
    not known yet waits until ``publish`` says which QoS it had."""
    acks: queue.Queue[int] = queue.Queue()
    qos_of: dict[int, int] = {}
    early: dict[int, int] = {}
    lock = threading.Lock()
    publish = client.client.publish

    def tracked(*args: Any, **kwargs: Any) -> Any:
        info = publish(*args, **kwargs)
        qos = kwargs.get("qos", args[2] if len(args) > 2 else 0)
        with lock:
            qos_of[info.mid] = qos
            rc = early.pop(info.mid, None)
        if rc is not None and qos:
            acks.put(rc)
        return info

    def on_publish(c: Any, u: Any, mid: int, rc: Any, props: Any = None) -> None:
        code = int(getattr(rc, "value", rc))
        with lock:
            qos = qos_of.get(mid)
            if qos is None:
                early[mid] = code
                return
        if qos:
            acks.put(code)

    client.client.publish = tracked  # type: ignore[method-assign]

    client.client.on_publish = on_publish
    return acks
