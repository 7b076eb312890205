"""mTLS identities end to end: a TLS listener that requires client certificates and makes
their common name (or distinguished name) the MQTT username, the ``cert`` source as the
only authenticator, and an ACL file keyed on ``${username}``. Each denial is checked as
paho 3.1.1 and 5.0 clients see it (SUBACK 0x80 / 0x87, PUBACK 0x87 on 5.0)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests import mqttbytes as mb
from tests.auth.support import MakeClient, capture_puback, mqtt, refused
from tests.helpers.paho import V5, V311
from tests.helpers.raw import RawClient
from tidemq.app import Broker
from tidemq.broker.hooks import ConnectedEvent, HookPoint
from tidemq.config import Config

__all__ = ["mqtt"]

pytestmark = pytest.mark.timeout(30)

DEVICE_1_DN = "CN=device-1,OU=Sensors,O=Acme"

# Each device owns devices/<its name>/#; the DN rule only matches under cert_as_username=dn.
ACL = f"""\
allow all publish   devices/${{username}}/#
allow all subscribe devices/${{username}}/#
allow user "{DEVICE_1_DN}" all fleet/#
"""


@dataclass
class PKI:
    ca_file: str
    server_file: str
    device_1: str  # CN=device-1, OU=Sensors, O=Acme
    device_2: str  # CN=device-2
    no_cn: str  # a certificate from the right CA without a common name

    def context(self, cert: str | None) -> ssl.SSLContext:
        """A client context trusting the CA, presenting *cert* (key + chain PEM) if given."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if cert is not None:
            ctx.load_cert_chain(cert)
        return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    d = tmp_path_factory.mktemp("mtls-pki")
    ca = trustme.CA(organization_name="TideMQ mTLS tests")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    leaves = {
        "server": ca.issue_cert("localhost", "127.0.0.1", common_name="localhost"),
        "device-1": ca.issue_cert(
            "device-1.example",
            common_name="device-1",
            organization_name="Acme",
            organization_unit_name="Sensors",
        ),
        "device-2": ca.issue_cert("device-2.example", common_name="device-2"),
        "no-cn": ca.issue_cert("no-cn.example"),
    }
    for name, leaf in leaves.items():
        leaf.private_key_and_cert_chain_pem.write_to_path(str(d / f"{name}.pem"))
    return PKI(
        str(d / "ca.pem"),
        str(d / "server.pem"),
        str(d / "device-1.pem"),
        str(d / "device-2.pem"),
        str(d / "no-cn.pem"),
    )


@dataclass
class Running:
    broker: Broker
    port: int
    usernames: list[str | None]  # of every client that completed its CONNECT


StartMtls = Callable[..., Awaitable[Running]]


@pytest.fixture
async def mtls(pki: PKI, tmp_path: Path) -> AsyncIterator[StartMtls]:
    """``await mtls("cn" | "dn")``: a broker whose only listener is TLS with required
    client certificates, authenticating by certificate alone (``auth.chain = ["cert"]``,
    no anonymous clients) and authorizing by the ACL file with ``no_match = deny``."""
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    started: list[Broker] = []

    async def start(identity: str, *, open_broker: bool = False) -> Running:
        values: dict[str, object] = {
            "listeners.listen": ["tls://127.0.0.1:0?require_client_cert=true"],
            "listeners.tls.certfile": pki.server_file,
            "listeners.tls.cafile": pki.ca_file,
            "listeners.tls.cert_as_username": identity,
            "mqtt.allow_anonymous": open_broker,
            "mqtt.sys_interval": 0,
            "storage.backend": "memory",
        }
        if not open_broker:
            values |= {"auth.chain": ["cert"], "acl.file": str(acl), "acl.no_match": "deny"}
        config = Config().with_values(values)
        broker = Broker(config)
        await broker.start()
        started.append(broker)
        usernames: list[str | None] = []

        def connected(event: ConnectedEvent) -> None:
            usernames.append(event.client.username)

        broker.hooks.register(HookPoint.CLIENT_CONNECTED, connected)
        [(scheme, _, port)] = broker.addresses
        assert scheme == "tls"
        return Running(broker, port, usernames)

    yield start
    for broker in started:
        await broker.stop()


def denied_suback(protocol: int) -> int:
    return 0x87 if protocol == V5 else 0x80


def denied_puback(protocol: int) -> int:
    """MQTT 5 says Not authorized; 3.1.1 has no code for it, the message is just dropped."""
    return 0x87 if protocol == V5 else 0


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_certificate_cn_decides_what_a_device_may_do(
    mtls: StartMtls, mqtt: MakeClient, pki: PKI, protocol: int
) -> None:
    running = await mtls("cn")
    dev1 = await mqtt(running.port, "d1", protocol, tls=pki.context(pki.device_1))
    dev2 = await mqtt(running.port, "d2", protocol, tls=pki.context(pki.device_2))
    assert running.usernames == ["device-1", "device-2"]

    assert await dev1.subscribe("devices/device-1/#", 1) == [1]
    assert await dev1.subscribe("devices/device-2/#", 1) == [denied_suback(protocol)]
    assert await dev1.subscribe("fleet/#", 1) == [denied_suback(protocol)]  # no_match = deny
    assert await dev2.subscribe("devices/device-2/#", 1) == [1]

    acks = capture_puback(dev1)
    await dev1.publish("devices/device-2/x", b"intrusion", qos=1)
    assert await asyncio.to_thread(acks.get, True, 5) == denied_puback(protocol)
    await dev1.publish("devices/device-1/x", b"own", qos=1)
    assert await asyncio.to_thread(acks.get, True, 5) == 0
    msg = await dev1.next_message()
    assert (msg.topic, msg.payload) == ("devices/device-1/x", b"own")

    # device-2 is subscribed to devices/device-2/#: had the refused message been routed,
    # it would have been queued before this marker, published after its PUBACK.
    await dev2.publish("devices/device-2/marker", b"after", qos=1)
    msg = await dev2.next_message()
    assert (msg.topic, msg.payload) == ("devices/device-2/marker", b"after")


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_certificate_overrides_the_connect_username(
    mtls: StartMtls, mqtt: MakeClient, pki: PKI, protocol: int
) -> None:
    """device-1's certificate with username "device-2" in CONNECT: still device-1."""
    running = await mtls("cn")
    spoof = await mqtt(
        running.port,
        "spoof",
        protocol,
        tls=pki.context(pki.device_1),
        username="device-2",
        password="anything",
    )
    assert running.usernames == ["device-1"]
    assert await spoof.subscribe("devices/device-2/#", 1) == [denied_suback(protocol)]
    assert await spoof.subscribe("devices/device-1/#", 1) == [1]
    acks = capture_puback(spoof)
    await spoof.publish("devices/device-2/x", b"claimed", qos=1)
    assert await asyncio.to_thread(acks.get, True, 5) == denied_puback(protocol)
    await spoof.publish("devices/device-1/x", b"mine", qos=1)
    assert await asyncio.to_thread(acks.get, True, 5) == 0
    msg = await spoof.next_message()
    assert (msg.topic, msg.payload) == ("devices/device-1/x", b"mine")


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_certificate_without_cn_does_not_fall_back_to_the_connect_username(
    mtls: StartMtls, pki: PKI, protocol: int
) -> None:
    """A verified certificate naming no CN gives no identity: the CONNECT username is not
    trusted in its place, and ``cert`` alone lets nobody in (as Mosquitto refuses it)."""
    running = await mtls("cn")
    rc = await refused(
        running.port,
        protocol,
        tls=pki.context(pki.no_cn),
        username="device-1",
        password="anything",
    )
    assert rc == (0x87 if protocol == V5 else 5)
    assert running.usernames == []


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_certificate_dn_is_the_username(
    mtls: StartMtls, mqtt: MakeClient, pki: PKI, protocol: int
) -> None:
    running = await mtls("dn")
    dev1 = await mqtt(running.port, "d1", protocol, tls=pki.context(pki.device_1))
    assert running.usernames == [DEVICE_1_DN]
    # The rule naming the DN as its user applies; ${username} expands to the DN too.
    assert await dev1.subscribe("fleet/#", 1) == [1]
    assert await dev1.subscribe(f"devices/{DEVICE_1_DN}/#", 1) == [1]
    assert await dev1.subscribe("devices/device-1/#", 1) == [denied_suback(protocol)]
    acks = capture_puback(dev1)
    await dev1.publish("devices/device-1/x", b"cn-topic", qos=1)
    assert await asyncio.to_thread(acks.get, True, 5) == denied_puback(protocol)
    await dev1.publish("fleet/status", b"up", qos=1)
    assert await asyncio.to_thread(acks.get, True, 5) == 0
    msg = await dev1.next_message()
    assert (msg.topic, msg.payload) == ("fleet/status", b"up")


async def test_client_without_certificate_is_refused_at_the_handshake(
    mtls: StartMtls, pki: PKI
) -> None:
    """No CONNACK ever: the TLS handshake fails at once (TLS 1.2) or at the first read (a
    TLS 1.3 client finishes its side before the server has checked for a certificate)."""
    running = await mtls("cn")
    got = b""
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", running.port, ssl=pki.context(None), server_hostname="localhost"
        )
        raw = RawClient(reader, writer)
        try:
            await raw.send(mb.gen_connect("no-cert"))
            got = await raw.expect_closed()
        finally:
            await raw.close()
    except (ssl.SSLError, ConnectionError):
        pass
    assert got == b"", f"a client without a certificate got {got!r}"
    assert running.usernames == []


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_no_identity_is_refused_even_without_auth_sources(
    mtls: StartMtls, pki: PKI, protocol: int
) -> None:
    """The broker itself refuses a certificate that names no user under
    ``cert_as_username`` (Mosquitto's use_identity_as_username), so no later source can
    take the username the client claims."""
    running = await mtls("cn", open_broker=True)
    rc = await refused(running.port, protocol, tls=pki.context(pki.no_cn), username="device-1")
    assert rc == (0x87 if protocol == V5 else 5)
    assert running.usernames == []
