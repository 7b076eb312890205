"""A ban taking effect disconnects the connected clients it matches (EMQX kicks a banned
client): MQTT 5 with DISCONNECT 0x98, MQTT 3.1.1 by a close, through the storage refresh
(``tidemq ctl`` in another process) and through ``BanList.add``; clients it does not
match stay, and an expired ban does nothing."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import mqttbytes as mb
from tests.auth.support import MakeClient, StartBroker, mqtt, start_broker
from tests.helpers.paho import V5, V311
from tests.helpers.raw import RawClient
from tidemq.app import Broker
from tidemq.auth.api import IGNORE, Authenticator, AuthOutcome, ClientIdentity, Credentials, Verdict
from tidemq.auth.bans import ADMINISTRATIVE_ACTION, BanList, normalize_ban_value
from tidemq.auth.passwords import hash_password
from tidemq.auth.plugin import AuthPlugin
from tidemq.broker.hooks import ClientInfo, Hooks
from tidemq.storage.api import BanRecord
from tidemq.storage.memory import MemoryStorage

__all__ = ["mqtt", "start_broker"]

pytestmark = pytest.mark.timeout(30)

REFRESH = 0.1  # bans.refresh_interval of the brokers here
WAIT = 5.0  # bounded wait for a kick: many refresh intervals


def ban(kind: str, value: str, until: float | None = None, reason: str = "") -> BanRecord:
    return BanRecord(
        kind=kind,  # type: ignore[arg-type]
        value=normalize_ban_value(kind, value),
        reason=reason,
        created_at=time.time(),
        until=until,
    )


class SignallingStorage(MemoryStorage):
    """Memory storage that signals each ``list_bans`` (each refresh of the broker)."""

    def __init__(self) -> None:
        super().__init__()
        self.listed = asyncio.Event()

    async def list_bans(self) -> list[BanRecord]:
        self.listed.set()
        return await super().list_bans()

    async def refreshes(self, count: int = 2) -> None:
        """Wait for *count* more refreshes (the second surely read what came before)."""
        for _ in range(count):
            self.listed.clear()
            await asyncio.wait_for(self.listed.wait(), WAIT)
        await asyncio.sleep(0)  # let the refresh that signalled finish


@dataclass
class Setup:
    broker: Broker
    storage: SignallingStorage
    bans: BanList
    raws: list[RawClient]

    async def raw(self, client_id: str, proto_ver: int = 5, **kw: object) -> RawClient:
        """A raw client, connected; its CONNACK must accept it."""
        raw = await RawClient.connect(self.broker.port)
        self.raws.append(raw)
        await raw.send(mb.gen_connect(client_id, proto_ver=proto_ver, **kw))  # type: ignore[arg-type]
        ack = await raw.read_packet()
        assert (ack[0], ack[3]) == (0x20, 0), ack
        return raw

    async def connack(self, client_id: str, proto_ver: int = 5, **kw: object) -> int:
        """The CONNACK code a new connection of *client_id* gets."""
        raw = await RawClient.connect(self.broker.port)
        self.raws.append(raw)
        await raw.send(mb.gen_connect(client_id, proto_ver=proto_ver, **kw))  # type: ignore[arg-type]
        return (await raw.read_packet())[3]


@pytest.fixture
async def setup(start_broker: StartBroker, tmp_path: Path) -> AsyncIterator[Setup]:
    # Users mallory and alice (password "x"); clients without a username are anonymous.
    passwords = tmp_path / "passwd"
    hashed = hash_password("x")
    passwords.write_text(f"mallory:{hashed}\nalice:{hashed}\n")
    storage = SignallingStorage()
    await storage.open()
    raws: list[RawClient] = []
    try:
        broker = await start_broker(
            {
                "auth.password_file.path": str(passwords),
                "bans.refresh_interval": REFRESH,
                "mqtt.allow_anonymous": True,
                "mqtt.reason_strings": True,
            },
            storage=storage,
        )
        assert broker.auth is not None
        bans = broker.auth.ban_checkers[0]
        assert isinstance(bans, BanList)
        yield Setup(broker, storage, bans, raws)
    finally:
        for raw in raws:
            await raw.close()
        await storage.close()


async def still_connected(raw: RawClient) -> None:
    await raw.send(mb.gen_pingreq())
    await raw.expect(mb.gen_pingresp())


KICKED_V5 = mb.gen_disconnect(
    reason_code=0x98, properties=mb.proplist((mb.REASON_STRING, "banned")), proto_ver=5
)


async def test_a_stored_clientid_ban_kicks_the_v5_client(setup: Setup, mqtt: MakeClient) -> None:
    victim = await setup.raw("victim")
    bystander = await mqtt(setup.broker.port, "bystander", protocol=V5)
    assert await bystander.subscribe("news/#") == [0]
    # As `tidemq ctl ban add clientid victim` does, from another process: into storage.
    await setup.storage.put_ban(ban("clientid", "victim", reason="test"))
    assert await victim.read_packet(timeout=WAIT) == KICKED_V5
    assert await victim.expect_closed() == b""
    assert await setup.connack("victim") == 0x8A  # reconnecting: Banned
    # The client the ban does not match stays connected and keeps receiving.
    publisher = await mqtt(setup.broker.port, "publisher", protocol=V311)
    await publisher.publish("news/1", b"still here")
    message = await bystander.next_message()
    assert (message.topic, message.payload) == ("news/1", b"still here")


async def test_bans_added_in_process_kick_v311_by_username(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    mallory = await setup.raw("m-1", proto_ver=4, username="mallory", password="x")
    alice = await setup.raw("a-1", proto_ver=4, username="alice", password="x")
    with caplog.at_level(logging.INFO, logger="tidemq.auth.bans"):
        await setup.bans.add(ban("username", "mallory"))  # enforced at once
    assert await mallory.expect_closed() == b""  # 3.1.1: no DISCONNECT, a close
    await still_connected(alice)
    kicked = [r.getMessage() for r in caplog.records if r.name == "tidemq.auth.bans"]
    assert len(kicked) == 1
    assert kicked[0].startswith("disconnecting m-1 (user mallory, 127.0.0.1)")
    assert "banned by username mallory" in kicked[0]
    assert await setup.connack("m-2", proto_ver=4, username="mallory", password="x") == 5


async def test_an_address_ban_kicks_loopback_clients(setup: Setup) -> None:
    v5 = await setup.raw("local-5")
    v3 = await setup.raw("local-3", proto_ver=4)
    await setup.storage.put_ban(ban("address", "127.0.0.0/8"))
    assert await v5.read_packet(timeout=WAIT) == KICKED_V5
    assert await v3.expect_closed(timeout=WAIT) == b""
    assert await setup.connack("local-new") == 0x8A


async def test_an_expired_ban_does_nothing(setup: Setup) -> None:
    raw = await setup.raw("old-offender", proto_ver=4)
    past = time.time() - 1
    await setup.storage.put_ban(ban("clientid", "old-offender", until=past))
    await setup.bans.add(ban("address", "127.0.0.1", until=past))
    await setup.storage.refreshes()
    await still_connected(raw)


# --- BanList with a stand-in for the broker's ConnectedClients -------------------------------


class FakeClients:
    def __init__(self, *infos: ClientInfo) -> None:
        self.infos = {i.client_id: i for i in infos}
        self.kicked: list[tuple[str, int, str]] = []

    def connected_clients(self) -> list[ClientInfo]:
        return list(self.infos.values())

    def disconnect_client(self, client_id: str, reason_code: int, reason: str) -> bool:
        self.kicked.append((client_id, reason_code, reason))
        return self.infos.pop(client_id, None) is not None


def info(client_id: str, username: str | None = None, host: str = "192.0.2.7") -> ClientInfo:
    return ClientInfo(
        client_id=client_id,
        username=username,
        peer=(host, 50000),
        listener="tcp",
        protocol_version=5,
    )


async def test_only_the_new_bans_are_enforced_on_connected_clients() -> None:
    storage = MemoryStorage()
    await storage.open()
    bans = BanList(storage, refresh_interval=0)
    await bans.open()
    clients = FakeClients(
        info("a"), info("b", "bob"), info("c", host="::ffff:10.1.2.3"), info("d", host="10.9.9.9")
    )
    plugin = AuthPlugin(ban_checkers=[bans])
    unregister = plugin.install(Hooks(), clients=clients)
    await storage.put_ban(ban("username", "bob"))
    await storage.put_ban(ban("address", "10.1.0.0/16"))
    await bans.refresh()
    assert sorted(clients.kicked) == [
        ("b", ADMINISTRATIVE_ACTION, "banned"),
        ("c", ADMINISTRATIVE_ACTION, "banned"),  # IPv4-mapped address
    ]
    # Unchanged bans at the next refresh: nobody is disconnected again.
    clients.infos["b"] = info("b", "bob")  # as if it were still there
    clients.kicked.clear()
    await bans.refresh()
    assert clients.kicked == []
    # Detached (the plugin unregistered): bans only refuse new CONNECTs.
    unregister()
    await bans.add(ban("clientid", "a"))
    assert clients.kicked == []
    outcome = await bans.check(ClientIdentity(client_id="a", username=None, peer_host=None))
    assert outcome is not None
    assert outcome.verdict is Verdict.DENY
    await bans.close()
    await storage.close()


async def test_a_ban_landing_during_slow_authentication_refuses_the_connect(
    setup: Setup,
) -> None:
    """Neither connected (the sweep's reach) nor banned when its CONNECT was first checked:
    the ban is checked again once the awaited sources have answered."""
    entered, release = asyncio.Event(), asyncio.Event()

    class Gate(Authenticator):
        name = "gate"

        async def authenticate(self, credentials: Credentials) -> AuthOutcome:
            entered.set()
            await release.wait()
            return IGNORE  # the next source (or anonymous access) decides, as before

    assert setup.broker.auth is not None
    setup.broker.auth.authenticators.insert(0, Gate())
    raw = await RawClient.connect(setup.broker.port)
    setup.raws.append(raw)
    await raw.send(mb.gen_connect("late-ban", proto_ver=5))
    await asyncio.wait_for(entered.wait(), WAIT)
    await setup.bans.add(ban("clientid", "late-ban"))
    release.set()
    ack = await raw.read_packet()
    assert (ack[0], ack[3]) == (0x20, 0x8A)
    # Without a ban the same slow path still accepts.
    entered.clear()
    other = await RawClient.connect(setup.broker.port)
    setup.raws.append(other)
    await other.send(mb.gen_connect("not-banned", proto_ver=5))
    ack = await other.read_packet()
    assert (ack[0], ack[3]) == (0x20, 0)
