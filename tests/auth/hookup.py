"""Test helper for the storage-backed auth sources: paho clients stopped at teardown,
refused ones included."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.helpers.paho import V311, Paho, connect


class Clients:
    """paho clients made by a test, all stopped at teardown (refused ones too, so paho
    does not keep reconnecting)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.made: list[Paho] = []

    async def connect(self, client_id: str, protocol: int = V311, **kwargs: Any) -> Paho:
        client = await connect(self.port, client_id, protocol=protocol, **kwargs)
        self.made.append(client)
        if kwargs.get("expect_rc", 0) not in (0, None):
            await self.stop(client)
        return client

    async def refused(self, client_id: str, protocol: int = V311, **kwargs: Any) -> int:
        """Connect expecting a refusal; returns the CONNACK code."""
        client = await connect(self.port, client_id, protocol=protocol, expect_rc=None, **kwargs)
        self.made.append(client)
        _, rc, _ = await asyncio.to_thread(client.connack.get, True, 5.0)
        await self.stop(client)
        return rc

    @staticmethod
    async def stop(client: Paho) -> None:
        client.client._reconnect_on_failure = False
        client.client.disconnect()
        await asyncio.to_thread(client.client.loop_stop)

    async def close(self) -> None:
        for client in self.made:
            await self.stop(client)
