"""Whole conversations between a client-role and a server-role ``MQTTConnection``.

``ConnectionPair`` (after h11's ``tests/helpers.py``) joins the two ends in memory: the bytes
one side produces with ``send()`` or ``data_to_send()`` are fed to the other side's
``receive_data`` and the packets that come out are compared with what was sent.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tests import mqttbytes as mb
from tidemq.protocol import (
    CAN_RECEIVE,
    DEFAULT_RECEIVE_MAXIMUM,
    Auth,
    ConnAck,
    Connect,
    ConnectionState,
    Disconnect,
    LocalProtocolError,
    MalformedPacket,
    MQTTConnection,
    OutgoingState,
    Packet,
    PacketTooLarge,
    PacketType,
    PingReq,
    PingResp,
    Properties,
    ProtocolVersion,
    ProtocolViolation,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    ReasonCode,
    ReceiveMaximumExceeded,
    RetainHandling,
    Role,
    SubAck,
    Subscribe,
    Subscription,
    TopicAliasInvalid,
    UnsubAck,
    Unsubscribe,
    UnsupportedProtocolVersion,
    Will,
    encode,
)

S = ConnectionState
CLIENT, SERVER = Role.CLIENT, Role.SERVER
ALL_VERSIONS = [3, 4, 5]
V3_VERSIONS = [3, 4]


class ConnectionPair:
    """A client and a server connection joined back to back, h11 style.

    ``send(role, packet)`` sends from *role*'s side, feeds the bytes to the other side and
    asserts that it received exactly ``expect`` (by default: the packet sent).
    ``flush(role)`` does the same with what *role* queued automatically.
    """

    def __init__(
        self,
        version: int = 4,
        *,
        client: MQTTConnection | None = None,
        server: MQTTConnection | None = None,
    ) -> None:
        self.version = version
        self.client = client if client is not None else MQTTConnection(CLIENT)
        self.server = server if server is not None else MQTTConnection(SERVER)
        self.now = 0.0

    def conn(self, role: Role) -> MQTTConnection:
        return self.client if role is CLIENT else self.server

    def peer(self, role: Role) -> MQTTConnection:
        return self.server if role is CLIENT else self.client

    def feed(self, role: Role, data: bytes) -> list[Packet]:
        """Give *data*, written by *role*, to the other side; return what it received."""
        return self.peer(role).receive_data(data, self.now)

    def send(
        self,
        role: Role,
        packets: Packet | Sequence[Packet],
        *,
        expect: Sequence[Packet] | None = None,
    ) -> list[Packet]:
        sent = [packets] if isinstance(packets, Packet) else list(packets)
        sender = self.conn(role)
        data = b"".join(sender.send(p, self.now) for p in sent)
        received = self.feed(role, data)
        assert received == (sent if expect is None else list(expect))
        return received

    def flush(self, role: Role, *, expect: Sequence[Packet]) -> list[Packet]:
        """Deliver what *role* queued automatically; assert the peer got *expect*."""
        received = self.feed(role, self.conn(role).data_to_send())
        assert received == list(expect)
        return received

    def assert_quiet(self) -> None:
        assert self.client.data_to_send() == b""
        assert self.server.data_to_send() == b""

    def connect(
        self,
        connect: Connect | None = None,
        connack: ConnAck | None = None,
    ) -> None:
        if connect is None:
            connect = Connect(protocol_version=ProtocolVersion(self.version), client_id="c")
        if connack is None:
            connack = ConnAck()
        self.send(CLIENT, connect)
        assert self.client.state is S.CONNECTING
        assert self.server.state is S.CONNECTING
        self.send(SERVER, connack)
        expected = S.CONNECTED if connack.reason_code < 0x80 else S.CLOSED
        assert self.client.state is expected
        assert self.server.state is expected
        self.assert_quiet()


def connected(version: int, **kwargs: MQTTConnection) -> ConnectionPair:
    pair = ConnectionPair(version, **kwargs)
    pair.connect()
    return pair


def v5_props(**kwargs: object) -> Properties:
    return Properties(**kwargs)  # type: ignore[arg-type]


# --- CONNECT / CONNACK ---------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_connect_connack(version: int) -> None:
    pair = ConnectionPair(version)
    assert pair.client.state is S.IDLE
    assert pair.server.state is S.AWAIT_CONNECT
    assert pair.client.negotiated_version is None
    pair.connect(
        Connect(
            protocol_version=ProtocolVersion(version),
            client_id="sensor-1",
            clean_start=False,
            keepalive=30,
            username="u",
            password=b"p",
            will=Will(topic="last/will", payload=b"bye", qos=1, retain=True),
        )
    )
    for conn in (pair.client, pair.server):
        assert conn.version == version
        assert conn.negotiated_version is ProtocolVersion(version)
        assert conn.keepalive == 30
        assert conn.peer_receive_maximum == DEFAULT_RECEIVE_MAXIMUM
        assert conn.peer_topic_alias_maximum == 0
        assert conn.peer_max_packet_size is None


@pytest.mark.parametrize("version", [4, 5])
def test_connack_session_present(version: int) -> None:
    pair = ConnectionPair(version)
    pair.connect(connack=ConnAck(session_present=True))


def test_v31_connack_has_no_session_present() -> None:
    pair = ConnectionPair(3)
    pair.send(CLIENT, Connect(protocol_version=ProtocolVersion.V31, client_id="c"))
    with pytest.raises(LocalProtocolError):
        pair.server.send(ConnAck(session_present=True))
    assert pair.server.state is S.CONNECTING
    pair.send(SERVER, ConnAck())
    assert pair.client.state is S.CONNECTED


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize(
    "code",
    [
        ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
        ReasonCode.CLIENT_IDENTIFIER_NOT_VALID,
        ReasonCode.BAD_USER_NAME_OR_PASSWORD,
        ReasonCode.NOT_AUTHORIZED,
        ReasonCode.SERVER_UNAVAILABLE,
    ],
)
def test_refused_connack_closes_both_sides(version: int, code: int) -> None:
    pair = ConnectionPair(version)
    pair.connect(connack=ConnAck(reason_code=code))
    with pytest.raises(LocalProtocolError):
        pair.client.send(PingReq())
    assert pair.client.receive_data(b"\xd0\x00") == []


def test_v3_connack_code_mapping_on_the_wire() -> None:
    server = MQTTConnection(SERVER)
    server.receive_data(encode(Connect(client_id="c"), 4))
    assert server.send(ConnAck(reason_code=ReasonCode.BAD_USER_NAME_OR_PASSWORD)) == bytes(
        [0x20, 0x02, 0x00, 0x04]
    )
    assert server.state is S.CLOSED


def test_v5_connect_and_connack_properties() -> None:
    pair = ConnectionPair(5)
    connect = Connect(
        protocol_version=ProtocolVersion.V5,
        client_id="c",
        keepalive=60,
        properties=v5_props(
            receive_maximum=10,
            topic_alias_maximum=5,
            maximum_packet_size=1000,
            session_expiry_interval=300,
        ),
    )
    pair.send(CLIENT, connect)
    client, server = pair.client, pair.server
    # What the client announced limits what it accepts...
    assert client.receive_maximum == 10
    assert client.topic_alias_maximum == 5
    # ...and what the server must respect.
    assert server.peer_receive_maximum == 10
    assert server.peer_topic_alias_maximum == 5
    assert server.peer_max_packet_size == 1000
    assert server.keepalive == 60

    connack = ConnAck(
        properties=v5_props(
            receive_maximum=3,
            topic_alias_maximum=4,
            maximum_packet_size=2000,
            server_keep_alive=20,
            assigned_client_identifier="c-1",
        )
    )
    pair.send(SERVER, connack)
    assert server.receive_maximum == 3
    assert server.topic_alias_maximum == 4
    assert client.peer_receive_maximum == 3
    assert client.peer_topic_alias_maximum == 4
    assert client.peer_max_packet_size == 2000
    # Server Keep Alive replaces the client's value on both ends [MQTT-3.2.2-21].
    assert client.keepalive == 20
    assert server.keepalive == 20
    assert client.send_quota == 3
    assert server.send_quota == 10


def test_peer_maximum_packet_size_is_enforced_on_send() -> None:
    pair = ConnectionPair(5)
    pair.connect(
        Connect(
            protocol_version=ProtocolVersion.V5,
            client_id="c",
            properties=v5_props(maximum_packet_size=64),
        ),
        ConnAck(properties=v5_props(maximum_packet_size=128)),
    )
    small = Publish(topic="t", payload=b"x" * 10)
    pair.send(SERVER, small)
    pair.send(CLIENT, small)
    with pytest.raises(LocalProtocolError):
        pair.server.send(Publish(topic="t", payload=b"x" * 100, qos=1, packet_id=1))
    assert pair.server.outgoing() == {}
    with pytest.raises(LocalProtocolError):
        pair.client.send(Publish(topic="t", payload=b"x" * 200))
    pair.send(CLIENT, Publish(topic="t", payload=b"x" * 100))


@pytest.mark.parametrize("role", [CLIENT, SERVER])
def test_announced_maximum_packet_size_is_enforced_on_receive(role: Role) -> None:
    pair = ConnectionPair(5)
    pair.connect(
        Connect(
            protocol_version=ProtocolVersion.V5,
            client_id="c",
            properties=v5_props(maximum_packet_size=64),
        ),
        ConnAck(properties=v5_props(maximum_packet_size=64)),
    )
    receiver = pair.conn(role)
    with pytest.raises(PacketTooLarge) as info:
        receiver.receive_data(encode(Publish(topic="t", payload=b"x" * 100), 5))
    assert info.value.reply == Disconnect(reason_code=ReasonCode.PACKET_TOO_LARGE)
    assert receiver.data_to_send() == b"\xe0\x01\x95"
    assert receiver.state is S.CLOSED


# --- SUBSCRIBE / UNSUBSCRIBE ---------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_subscribe_and_unsubscribe(version: int) -> None:
    pair = connected(version)
    pid = pair.client.next_packet_id()
    subscribe = Subscribe(
        packet_id=pid,
        subscriptions=(
            Subscription(topic_filter="a/+", qos=1),
            Subscription(topic_filter="b/#", qos=2),
        ),
    )
    pair.send(CLIENT, subscribe)
    # The id stays in use until the SUBACK.
    with pytest.raises(LocalProtocolError):
        pair.client.send(subscribe)
    with pytest.raises(LocalProtocolError):
        pair.client.send(Publish(topic="t", qos=1, packet_id=pid))
    assert pair.client.next_packet_id() != pid
    pair.send(SERVER, SubAck(packet_id=pid, reason_codes=(1, 2)))

    unsub_id = pair.client.next_packet_id()
    pair.send(CLIENT, Unsubscribe(packet_id=unsub_id, topic_filters=("a/+", "b/#")))
    codes = (0, ReasonCode.NO_SUBSCRIPTION_EXISTED) if version == 5 else ()
    pair.send(SERVER, UnsubAck(packet_id=unsub_id, reason_codes=codes))
    # Both ids are free again.
    pair.send(CLIENT, subscribe)
    # 0x80 (failure) exists from MQTT 3.1.1 on.
    pair.send(SERVER, SubAck(packet_id=pid, reason_codes=(0x80 if version > 3 else 1, 0)))
    pair.assert_quiet()


def test_v5_subscribe_options_and_properties() -> None:
    pair = connected(5)
    subscribe = Subscribe(
        packet_id=1,
        subscriptions=(
            Subscription(
                topic_filter="x/#",
                qos=2,
                no_local=True,
                retain_as_published=True,
                retain_handling=RetainHandling.DO_NOT_SEND,
            ),
            Subscription(topic_filter="$share/g/y", qos=1),
        ),
        properties=v5_props(subscription_identifiers=(7,), user_properties=(("k", "v"),)),
    )
    pair.send(CLIENT, subscribe)
    pair.send(
        SERVER,
        SubAck(
            packet_id=1,
            reason_codes=(2, ReasonCode.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED),
            properties=v5_props(reason_string="no sharing"),
        ),
    )


# --- PUBLISH: QoS 0, 1, 2 in both directions -----------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize("sender", [CLIENT, SERVER])
def test_qos0_publish(version: int, sender: Role) -> None:
    pair = connected(version)
    pair.send(sender, Publish(topic="a/b", payload=b"hello", retain=True))
    assert pair.conn(sender).outgoing() == {}
    pair.assert_quiet()


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize("sender", [CLIENT, SERVER])
def test_qos1_publish(version: int, sender: Role) -> None:
    pair = connected(version)
    src, dst = pair.conn(sender), pair.peer(sender)
    receiver = CLIENT if sender is SERVER else SERVER
    pid = src.next_packet_id()
    publish = Publish(topic="a/b", payload=b"m", qos=1, packet_id=pid)
    pair.send(sender, publish)
    assert src.outgoing() == {pid: OutgoingState.AWAIT_PUBACK}
    assert src.send_quota == DEFAULT_RECEIVE_MAXIMUM - 1
    # A re-send with DUP is delivered again (at least once) and keeps one exchange.
    dup = Publish(topic="a/b", payload=b"m", qos=1, packet_id=pid, dup=True)
    pair.send(sender, dup)
    assert src.outgoing() == {pid: OutgoingState.AWAIT_PUBACK}
    pair.send(receiver, PubAck(packet_id=pid))
    assert src.outgoing() == {}
    assert src.send_quota == DEFAULT_RECEIVE_MAXIMUM
    assert dst.incoming_qos2() == []
    pair.assert_quiet()


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize("sender", [CLIENT, SERVER])
def test_qos2_publish(version: int, sender: Role) -> None:
    pair = connected(version)
    src, dst = pair.conn(sender), pair.peer(sender)
    receiver = CLIENT if sender is SERVER else SERVER
    pid = src.next_packet_id()
    publish = Publish(topic="a/b", payload=b"exactly once", qos=2, packet_id=pid)
    pair.send(sender, publish)
    assert src.outgoing() == {pid: OutgoingState.AWAIT_PUBREC}
    assert dst.incoming_qos2() == [pid]
    pair.assert_quiet()

    # PUBREC: the sender queues PUBREL by itself.
    pair.send(receiver, PubRec(packet_id=pid))
    assert src.outgoing() == {pid: OutgoingState.AWAIT_PUBCOMP}
    assert dst.incoming_qos2() == [pid]
    # The automatic PUBREL reaches the receiver, which answers PUBCOMP by itself.
    pair.flush(sender, expect=[PubRel(packet_id=pid)])
    assert dst.incoming_qos2() == []
    assert src.outgoing() == {pid: OutgoingState.AWAIT_PUBCOMP}
    pair.flush(receiver, expect=[PubComp(packet_id=pid)])
    assert src.outgoing() == {}
    assert src.send_quota == DEFAULT_RECEIVE_MAXIMUM
    pair.assert_quiet()


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_qos2_dup_while_awaiting_pubrel_is_not_delivered_twice(version: int) -> None:
    pair = connected(version)
    publish = Publish(topic="t", payload=b"once", qos=2, packet_id=5)
    dup = Publish(topic="t", payload=b"once", qos=2, packet_id=5, dup=True)
    pair.send(CLIENT, publish)
    # Re-sent before the server answered: swallowed, nothing to answer yet.
    pair.send(CLIENT, dup, expect=[])
    pair.assert_quiet()
    assert pair.server.incoming_qos2() == [5]
    # The server sends PUBREC, but it is slow to arrive...
    pubrec_bytes = pair.server.send(PubRec(packet_id=5))
    # ...so the client re-sends the PUBLISH once more while the server awaits PUBREL:
    # not delivered again, PUBREC repeated.
    pair.send(CLIENT, dup, expect=[])
    repeated = pair.server.data_to_send()
    assert repeated == encode(PubRec(packet_id=5), version)
    assert pair.server.incoming_qos2() == [5]
    # Both PUBRECs reach the client, each answered with PUBREL.
    assert pair.client.receive_data(pubrec_bytes + repeated) == [PubRec(packet_id=5)] * 2
    assert pair.client.outgoing() == {5: OutgoingState.AWAIT_PUBCOMP}
    pair.flush(CLIENT, expect=[PubRel(packet_id=5)] * 2)
    assert pair.server.incoming_qos2() == []
    late = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND if version == 5 else 0
    pair.flush(SERVER, expect=[PubComp(packet_id=5), PubComp(packet_id=5, reason_code=late)])
    assert pair.client.outgoing() == {}
    pair.assert_quiet()


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_qos2_dup_from_the_server_gets_pubrec_again(version: int) -> None:
    pair = connected(version)
    pid = pair.server.next_packet_id()
    publish = Publish(topic="t", payload=b"p", qos=2, packet_id=pid)
    pair.send(SERVER, publish)
    pair.send(CLIENT, PubRec(packet_id=pid))
    pair.server.data_to_send()  # the automatic PUBREL is lost
    # The server may still re-send the PUBLISH with DUP; the client delivers it once.
    dup = Publish(topic="t", payload=b"p", qos=2, packet_id=pid, dup=True)
    pair.send(SERVER, dup, expect=[])
    pair.flush(CLIENT, expect=[PubRec(packet_id=pid)])
    # The repeated PUBREC makes the server repeat PUBREL.
    pair.flush(SERVER, expect=[PubRel(packet_id=pid)])
    pair.flush(CLIENT, expect=[PubComp(packet_id=pid)])
    assert pair.server.outgoing() == {}
    assert pair.client.incoming_qos2() == []
    pair.assert_quiet()


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_pubrel_for_unknown_id(version: int) -> None:
    pair = connected(version)
    pair.send(CLIENT, PubRel(packet_id=77))
    code = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND if version == 5 else 0
    pair.flush(SERVER, expect=[PubComp(packet_id=77, reason_code=code)])
    pair.assert_quiet()


def test_pubrel_for_unknown_id_v5_bytes() -> None:
    pair = connected(5)
    pair.feed(CLIENT, b"\x62\x02\x00\x4d")
    assert pair.server.data_to_send() == b"\x70\x03\x00\x4d\x92"


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_pubrec_for_unknown_id_gets_pubrel(version: int) -> None:
    pair = connected(version)
    pair.send(SERVER, PubRec(packet_id=9))
    code = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND if version == 5 else 0
    pair.flush(CLIENT, expect=[PubRel(packet_id=9, reason_code=code)])


def test_v5_failing_pubrec_ends_the_exchange() -> None:
    pair = connected(5)
    pair.send(CLIENT, Publish(topic="t", qos=2, packet_id=3))
    assert pair.server.incoming_qos2() == [3]
    pair.send(SERVER, PubRec(packet_id=3, reason_code=ReasonCode.NOT_AUTHORIZED))
    assert pair.server.incoming_qos2() == []
    assert pair.client.outgoing() == {}
    pair.assert_quiet()  # no PUBREL after a failing PUBREC
    # The id is free on both sides: a new message with it is delivered.
    pair.send(CLIENT, Publish(topic="t", payload=b"2", qos=2, packet_id=3))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_packets_in_both_directions_interleaved(version: int) -> None:
    pair = connected(version)
    up = Publish(topic="up", payload=b"u", qos=2, packet_id=pair.client.next_packet_id())
    down = Publish(topic="down", payload=b"d", qos=1, packet_id=pair.server.next_packet_id())
    assert up.packet_id == down.packet_id == 1  # each side has its own id space
    pair.send(CLIENT, up)
    pair.send(SERVER, down)
    pair.send(SERVER, PubRec(packet_id=1))
    pair.send(CLIENT, PubAck(packet_id=1))
    pair.flush(CLIENT, expect=[PubRel(packet_id=1)])
    pair.flush(SERVER, expect=[PubComp(packet_id=1)])
    assert pair.client.outgoing() == pair.server.outgoing() == {}
    pair.assert_quiet()


# --- Topic aliases -------------------------------------------------------------------------


def test_topic_alias_client_to_server() -> None:
    pair = connected(5, server=MQTTConnection(SERVER, topic_alias_maximum=10))
    full = Publish(topic="sensors/1", payload=b"a", properties=v5_props(topic_alias=3))
    pair.send(CLIENT, full)
    alias_only = Publish(topic="", payload=b"b", properties=v5_props(topic_alias=3))
    pair.send(
        CLIENT,
        alias_only,
        expect=[Publish(topic="sensors/1", payload=b"b", properties=v5_props(topic_alias=3))],
    )
    # Re-mapping an alias to another topic is allowed.
    pair.send(CLIENT, Publish(topic="sensors/2", qos=1, packet_id=1, properties=full.properties))
    pair.send(
        CLIENT,
        Publish(topic="", payload=b"c", qos=1, packet_id=2, properties=full.properties),
        expect=[
            Publish(topic="sensors/2", payload=b"c", qos=1, packet_id=2, properties=full.properties)
        ],
    )


def test_topic_alias_maximum_from_connack() -> None:
    pair = connected(5)
    # The server announces no aliases by default: any alias is invalid.
    with pytest.raises(TopicAliasInvalid):
        pair.send(CLIENT, Publish(topic="t", properties=v5_props(topic_alias=1)))
    assert pair.server.data_to_send() == b"\xe0\x01\x94"
    assert pair.server.state is S.CLOSED

    pair = ConnectionPair(5)
    pair.connect(connack=ConnAck(properties=v5_props(topic_alias_maximum=2)))
    assert pair.client.peer_topic_alias_maximum == 2
    pair.send(CLIENT, Publish(topic="t", properties=v5_props(topic_alias=2)))
    with pytest.raises(TopicAliasInvalid):
        pair.send(CLIENT, Publish(topic="t", properties=v5_props(topic_alias=3)))
    assert pair.server.data_to_send() == b"\xe0\x01\x94"


def test_unknown_topic_alias_is_a_protocol_error() -> None:
    pair = connected(5, server=MQTTConnection(SERVER, topic_alias_maximum=10))
    with pytest.raises(ProtocolViolation) as info:
        pair.send(CLIENT, Publish(topic="", properties=v5_props(topic_alias=4)))
    assert info.value.reply == Disconnect(reason_code=ReasonCode.PROTOCOL_ERROR)
    assert pair.server.data_to_send() == b"\xe0\x01\x82"
    assert pair.server.state is S.CLOSED


def test_topic_alias_server_to_client_with_outgoing_alias() -> None:
    pair = ConnectionPair(5)
    pair.connect(
        Connect(
            protocol_version=ProtocolVersion.V5,
            client_id="c",
            properties=v5_props(topic_alias_maximum=2),
        )
    )
    server = pair.server
    assert server.peer_topic_alias_maximum == 2
    sent_topics = ["a/1", "a/2", "a/1", "a/3", "a/2", "a/3"]
    for n, topic in enumerate(sent_topics):
        payload = str(n).encode()
        assigned = server.outgoing_alias(topic)
        if assigned is None:
            # The peer's maximum is used up; this topic goes without an alias.
            assert topic == "a/3"
            pair.send(SERVER, Publish(topic=topic, payload=payload))
            continue
        alias, new = assigned
        props = v5_props(topic_alias=alias)
        wire_topic = topic if new else ""
        pair.send(
            SERVER,
            Publish(topic=wire_topic, payload=payload, properties=props),
            expect=[Publish(topic=topic, payload=payload, properties=props)],
        )
    assert server.outgoing_alias("a/1") == (1, False)
    assert server.outgoing_alias("a/2") == (2, False)
    assert server.outgoing_alias("a/3") is None


def test_outgoing_alias_without_peer_support() -> None:
    pair = connected(5)
    assert pair.server.outgoing_alias("t") is None
    assert pair.client.outgoing_alias("t") is None


# --- Receive Maximum -----------------------------------------------------------------------


@pytest.mark.parametrize("qos", [1, 2])
def test_server_receiving_more_than_its_receive_maximum(qos: int) -> None:
    pair = ConnectionPair(5)
    pair.connect(connack=ConnAck(properties=v5_props(receive_maximum=2)))
    assert pair.server.receive_maximum == 2
    pair.send(CLIENT, Publish(topic="t", qos=qos, packet_id=1))
    pair.send(CLIENT, Publish(topic="t", qos=qos, packet_id=2))
    assert pair.client.send_quota == 0
    # A well-behaved client cannot go further...
    with pytest.raises(LocalProtocolError):
        pair.client.send(Publish(topic="t", qos=qos, packet_id=3))
    with pytest.raises(LocalProtocolError):
        pair.client.track_outgoing(3, qos)
    assert set(pair.client.outgoing()) == {1, 2}
    # ...a misbehaving one is cut off with DISCONNECT 0x93.
    with pytest.raises(ReceiveMaximumExceeded) as info:
        pair.feed(CLIENT, encode(Publish(topic="t", qos=qos, packet_id=3), 5))
    assert info.value.reply == Disconnect(reason_code=ReasonCode.RECEIVE_MAXIMUM_EXCEEDED)
    assert pair.server.data_to_send() == b"\xe0\x01\x93"
    assert pair.server.state is S.CLOSED
    assert pair.feed(CLIENT, encode(PingReq(), 5)) == []


def test_client_receiving_more_than_its_receive_maximum() -> None:
    pair = ConnectionPair(5)
    pair.connect(
        Connect(
            protocol_version=ProtocolVersion.V5,
            client_id="c",
            properties=v5_props(receive_maximum=1),
        )
    )
    assert pair.server.send_quota == 1
    pair.send(SERVER, Publish(topic="t", qos=1, packet_id=1))
    with pytest.raises(LocalProtocolError):
        pair.server.send(Publish(topic="t", qos=2, packet_id=2))
    with pytest.raises(ReceiveMaximumExceeded):
        pair.feed(SERVER, encode(Publish(topic="t", qos=2, packet_id=2), 5))
    assert pair.client.data_to_send() == b"\xe0\x01\x93"
    assert pair.client.state is S.CLOSED


def test_receive_maximum_accounting_frees_slots_on_ack() -> None:
    pair = ConnectionPair(5)
    pair.connect(connack=ConnAck(properties=v5_props(receive_maximum=2)))
    client = pair.client
    pair.send(CLIENT, Publish(topic="t", qos=1, packet_id=1))
    pair.send(CLIENT, Publish(topic="t", qos=2, packet_id=2))
    assert client.send_quota == 0
    # A DUP re-send of an exchange in flight does not take another slot.
    pair.send(CLIENT, Publish(topic="t", qos=1, packet_id=1, dup=True))
    pair.send(SERVER, PubAck(packet_id=1))
    assert client.send_quota == 1
    pair.send(CLIENT, Publish(topic="t", qos=1, packet_id=3))
    assert client.send_quota == 0
    pair.send(SERVER, PubAck(packet_id=3))
    # QoS 2 holds its slot on the sender until PUBCOMP.
    pair.send(SERVER, PubRec(packet_id=2))
    assert client.send_quota == 1
    pair.flush(CLIENT, expect=[PubRel(packet_id=2)])
    assert client.send_quota == 1
    pair.flush(SERVER, expect=[PubComp(packet_id=2)])
    assert client.send_quota == 2
    # The receiver's slots are free as well: two more are accepted.
    pair.send(CLIENT, Publish(topic="t", qos=2, packet_id=4))
    pair.send(CLIENT, Publish(topic="t", qos=2, packet_id=5))


def test_track_outgoing_respects_peer_receive_maximum() -> None:
    pair = ConnectionPair(5)
    pair.connect(connack=ConnAck(properties=v5_props(receive_maximum=3)))
    server_side = pair.server
    client = pair.client
    for pid in (10, 11, 12):
        client.track_outgoing(pid, 1 + pid % 2)
    assert client.send_quota == 0
    assert client.outgoing() == {
        10: OutgoingState.AWAIT_PUBACK,
        11: OutgoingState.AWAIT_PUBREC,
        12: OutgoingState.AWAIT_PUBACK,
    }
    with pytest.raises(LocalProtocolError):
        client.track_outgoing(13, 1)
    assert len(client.outgoing()) == 3
    # A PUBLISH for a tracked id is only a DUP re-send.
    with pytest.raises(LocalProtocolError):
        client.send(Publish(topic="t", qos=1, packet_id=10))
    pair.send(CLIENT, Publish(topic="t", qos=1, packet_id=10, dup=True))
    assert server_side.state is S.CONNECTED


# --- Packet identifiers --------------------------------------------------------------------


def test_next_packet_id_skips_ids_in_use_and_wraps() -> None:
    pair = connected(5)
    client = pair.client
    assert [client.next_packet_id() for _ in range(3)] == [1, 2, 3]
    pair.send(CLIENT, Publish(topic="t", qos=1, packet_id=5))
    pair.send(CLIENT, Subscribe(packet_id=6, subscriptions=(Subscription(topic_filter="x"),)))
    assert client.next_packet_id() == 4
    assert client.next_packet_id() == 7
    # Wrap at 65535 back to 1, skipping what is still in use.
    pair.send(CLIENT, Publish(topic="t", qos=2, packet_id=65_534))
    pair.send(CLIENT, Publish(topic="t", qos=1, packet_id=1))
    for _ in range(65_532 - 7):
        client.next_packet_id()
    assert client.next_packet_id() == 65_533
    assert client.next_packet_id() == 65_535
    assert client.next_packet_id() == 2
    assert client.next_packet_id() == 3
    assert client.next_packet_id() == 4
    assert client.next_packet_id() == 7


def test_next_packet_id_when_every_id_is_in_use() -> None:
    conn = MQTTConnection(CLIENT)
    for pid in range(1, 65_536):
        conn.restore_outgoing(pid, OutgoingState.AWAIT_PUBACK)
    with pytest.raises(LocalProtocolError):
        conn.next_packet_id()


def test_publish_cannot_reuse_an_id_in_flight() -> None:
    pair = connected(5)
    pair.send(CLIENT, Publish(topic="t", qos=1, packet_id=1))
    with pytest.raises(LocalProtocolError):
        pair.client.send(Publish(topic="t", qos=2, packet_id=1))
    with pytest.raises(LocalProtocolError):
        pair.client.send(Subscribe(packet_id=1, subscriptions=(Subscription(topic_filter="x"),)))
    with pytest.raises(LocalProtocolError):
        pair.client.send(Unsubscribe(packet_id=1, topic_filters=("x",)))
    pair.send(CLIENT, Unsubscribe(packet_id=2, topic_filters=("x",)))
    # A PUBLISH cannot take the id of a SUBSCRIBE/UNSUBSCRIBE in flight either
    # [MQTT-2.2.1-3], even flagged DUP.
    for dup in (False, True):
        with pytest.raises(LocalProtocolError):
            pair.client.send(Publish(topic="t", qos=1, packet_id=2, dup=dup))
    assert pair.client.outgoing() == {1: OutgoingState.AWAIT_PUBACK}


# --- PINGREQ / keepalive -------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_pingreq_gets_automatic_pingresp(version: int) -> None:
    pair = connected(version)
    pair.send(CLIENT, PingReq())
    pair.flush(SERVER, expect=[PingResp()])
    pair.send(CLIENT, [PingReq(), PingReq()])
    pair.flush(SERVER, expect=[PingResp(), PingResp()])
    pair.assert_quiet()


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_pingreq_pipelined_before_connack_is_answered_after_it(version: int) -> None:
    pair = ConnectionPair(version)
    connect = Connect(protocol_version=ProtocolVersion(version), client_id="c")
    publish = Publish(topic="t", qos=2, packet_id=1)
    pair.send(CLIENT, [connect, PingReq(), publish, PubRel(packet_id=1)])
    # Nothing may precede the CONNACK [MQTT-3.2.0-1].
    assert pair.server.data_to_send() == b""
    connack_bytes = pair.server.send(ConnAck())
    queued = pair.server.data_to_send()
    assert queued == encode(PingResp(), version) + encode(PubComp(packet_id=1), version)
    received = pair.client.receive_data(connack_bytes + queued)
    assert received == [ConnAck(), PingResp(), PubComp(packet_id=1)]
    assert pair.client.state is pair.server.state is S.CONNECTED


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_replies_held_for_a_refused_connack_are_dropped(version: int) -> None:
    pair = ConnectionPair(version)
    connect = Connect(protocol_version=ProtocolVersion(version), client_id="c")
    pair.send(CLIENT, [connect, PingReq()])
    pair.server.send(ConnAck(reason_code=ReasonCode.NOT_AUTHORIZED))
    assert pair.server.state is S.CLOSED
    assert pair.server.data_to_send() == b""


def test_keepalive_deadline() -> None:
    server = MQTTConnection(SERVER)
    assert server.keepalive_deadline is None
    server.receive_data(encode(Connect(client_id="c", keepalive=10), 4), now=100.0)
    assert server.last_received == 100.0
    assert server.keepalive_deadline == 115.0
    server.send(ConnAck(), now=101.0)
    assert server.last_sent == 101.0
    server.receive_data(b"\xc0", now=110.0)  # half a PINGREQ still counts as traffic
    assert server.keepalive_deadline == 125.0
    assert server.receive_data(b"\x00", now=112.5) == [PingReq()]
    assert server.keepalive_deadline == 112.5 + 15.0


def test_keepalive_zero_has_no_deadline() -> None:
    pair = ConnectionPair(4)
    pair.connect(Connect(client_id="c", keepalive=0))
    assert pair.server.keepalive_deadline is None
    assert pair.client.keepalive_deadline is None


def test_server_keep_alive_overrides_keepalive_deadline() -> None:
    pair = ConnectionPair(5)
    pair.now = 50.0
    pair.connect(
        Connect(protocol_version=ProtocolVersion.V5, client_id="c", keepalive=100),
        ConnAck(properties=v5_props(server_keep_alive=4)),
    )
    assert pair.server.keepalive == pair.client.keepalive == 4
    assert pair.server.keepalive_deadline == 50.0 + 6.0
    assert pair.client.keepalive_deadline == 50.0 + 6.0


# --- DISCONNECT ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_client_disconnect_closes_both(version: int) -> None:
    pair = connected(version)
    pair.send(CLIENT, Disconnect())
    assert pair.client.state is pair.server.state is S.CLOSED
    with pytest.raises(LocalProtocolError):
        pair.client.send(PingReq())
    assert pair.server.receive_data(b"\xc0\x00") == []
    pair.assert_quiet()


def test_v5_server_disconnect_closes_both() -> None:
    pair = connected(5)
    pair.send(
        SERVER,
        Disconnect(
            reason_code=ReasonCode.SERVER_SHUTTING_DOWN,
            properties=v5_props(reason_string="bye"),
        ),
    )
    assert pair.client.state is pair.server.state is S.CLOSED


@pytest.mark.parametrize("version", V3_VERSIONS)
def test_v3_server_cannot_send_disconnect(version: int) -> None:
    pair = connected(version)
    with pytest.raises(LocalProtocolError):
        pair.server.send(Disconnect())
    assert pair.server.state is S.CONNECTED


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_disconnect_before_connack(version: int) -> None:
    pair = ConnectionPair(version)
    pair.send(CLIENT, [Connect(protocol_version=ProtocolVersion(version)), Disconnect()])
    assert pair.client.state is pair.server.state is S.CLOSED


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_bytes_after_disconnect_in_the_same_chunk_are_ignored(version: int) -> None:
    pair = connected(version)
    data = pair.client.send(Disconnect())
    # A misbehaving peer writes on after its DISCONNECT: the result must not depend on
    # whether the bytes arrive in one chunk or two, and nothing is sent back.
    assert pair.server.receive_data(data + encode(PingReq(), version)) == [Disconnect()]
    assert pair.server.state is S.CLOSED
    pair.assert_quiet()


# --- Errors --------------------------------------------------------------------------------


def assert_closed(conn: MQTTConnection, version: int) -> None:
    assert conn.state is S.CLOSED
    assert conn.receive_data(encode(PingReq(), version)) == []
    assert conn.receive_data(b"\xff\xff\xff\xff\xff") == []
    assert conn.data_to_send() == b""


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_second_connect(version: int) -> None:
    pair = connected(version)
    connect = Connect(protocol_version=ProtocolVersion(version), client_id="again")
    with pytest.raises(ProtocolViolation) as info:
        pair.feed(CLIENT, encode(connect, version))
    assert info.value.rule == "[MQTT-3.1.0-2]"
    if version == 5:
        assert info.value.reply == Disconnect(reason_code=ReasonCode.PROTOCOL_ERROR)
        assert pair.server.data_to_send() == b"\xe0\x01\x82"
    else:
        assert info.value.reply is None
        assert pair.server.data_to_send() == b""
    assert_closed(pair.server, version)


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_client_cannot_send_a_second_connect(version: int) -> None:
    pair = ConnectionPair(version)
    connect = Connect(protocol_version=ProtocolVersion(version))
    pair.send(CLIENT, connect)
    with pytest.raises(LocalProtocolError):
        pair.client.send(connect)
    pair.send(SERVER, ConnAck())
    with pytest.raises(LocalProtocolError):
        pair.client.send(connect)
    assert pair.client.state is S.CONNECTED


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_first_packet_not_connect(version: int) -> None:
    server = MQTTConnection(SERVER)
    with pytest.raises(ProtocolViolation) as info:
        server.receive_data(encode(Publish(topic="t"), version))
    assert info.value.rule == "[MQTT-3.1.0-1]"
    assert info.value.reply is None
    assert server.data_to_send() == b""
    assert_closed(server, version)


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_malformed_packet_after_connect(version: int) -> None:
    pair = connected(version)
    bad = b"\x60\x02\x00\x01"  # PUBREL without its reserved flags 0010 [MQTT-3.6.1-1]
    with pytest.raises(MalformedPacket) as info:
        pair.feed(CLIENT, bad)
    if version == 5:
        assert info.value.reply == Disconnect(reason_code=ReasonCode.MALFORMED_PACKET)
        assert pair.server.data_to_send() == b"\xe0\x01\x81"
    else:
        assert info.value.reply is None
        assert pair.server.data_to_send() == b""
    assert_closed(pair.server, version)


def test_malformed_packet_from_the_server_v5() -> None:
    pair = connected(5)
    with pytest.raises(MalformedPacket):
        pair.feed(SERVER, mb.gen_publish("t", qos=3, proto_ver=5))
    assert pair.client.data_to_send() == b"\xe0\x01\x81"
    assert_closed(pair.client, 5)


@pytest.mark.parametrize("level", [0, 2, 6, 7, 255])
def test_unsupported_protocol_level(level: int) -> None:
    server = MQTTConnection(SERVER)
    with pytest.raises(UnsupportedProtocolVersion) as info:
        server.receive_data(mb.gen_connect("c", proto_ver=level, proto_name="MQTT"))
    assert info.value.reply == ConnAck(reason_code=ReasonCode.UNSUPPORTED_PROTOCOL_VERSION)
    assert server.data_to_send() == bytes([0x20, 0x02, 0x00, 0x01])
    assert_closed(server, 4)


def test_malformed_v5_connect_gets_v5_connack() -> None:
    server = MQTTConnection(SERVER)
    # Reserved flag bit 0 of the connect flags set [MQTT-3.1.2-3].
    body = mb.utf8("MQTT") + bytes([5, 0x03, 0, 60, 0]) + mb.utf8("c")
    with pytest.raises(MalformedPacket) as info:
        server.receive_data(mb.packet(0x10, body))
    assert info.value.reply == ConnAck(reason_code=ReasonCode.MALFORMED_PACKET)
    assert server.data_to_send() == b"\x20\x03\x00\x81\x00"
    assert_closed(server, 5)


def test_malformed_packet_pipelined_after_v5_connect_gets_connack() -> None:
    server = MQTTConnection(SERVER)
    connect = encode(Connect(protocol_version=ProtocolVersion.V5, client_id="c"), 5)
    with pytest.raises(MalformedPacket) as info:
        server.receive_data(connect + b"\x60\x02\x00\x01")
    # No CONNACK was sent yet, so the error is reported in one.
    assert info.value.reply == ConnAck(reason_code=ReasonCode.MALFORMED_PACKET)
    assert server.data_to_send() == b"\x20\x03\x00\x81\x00"
    assert_closed(server, 5)


def test_v3_connect_with_bad_client_id_gets_v3_connack() -> None:
    server = MQTTConnection(SERVER)
    connect = Connect(client_id="c")
    server.receive_data(encode(connect, 4))
    # The application refuses the identifier: CONNACK 0x02 on the wire.
    assert server.send(ConnAck(reason_code=ReasonCode.CLIENT_IDENTIFIER_NOT_VALID)) == bytes(
        [0x20, 0x02, 0x00, 0x02]
    )
    assert server.state is S.CLOSED


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_client_receiving_publish_before_connack(version: int) -> None:
    pair = ConnectionPair(version)
    pair.send(CLIENT, Connect(protocol_version=ProtocolVersion(version)))
    with pytest.raises(ProtocolViolation) as info:
        pair.feed(SERVER, encode(Publish(topic="t"), version))
    assert info.value.rule == "[MQTT-3.2.0-1]"
    if version == 5:
        assert pair.client.data_to_send() == b"\xe0\x01\x82"
    assert_closed(pair.client, version)


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_wrong_direction_packets(version: int) -> None:
    pair = connected(version)
    with pytest.raises(ProtocolViolation):
        pair.feed(CLIENT, encode(SubAck(packet_id=1, reason_codes=(0,)), version))
    assert pair.server.state is S.CLOSED
    pair = connected(version)
    with pytest.raises(ProtocolViolation):
        pair.feed(SERVER, encode(PingReq(), version))
    assert pair.client.state is S.CLOSED
    assert PacketType.PINGREQ not in CAN_RECEIVE[(CLIENT, S.CONNECTED)]


def test_auth_round_trip_v5() -> None:
    pair = connected(5)
    auth = Auth(
        reason_code=ReasonCode.RE_AUTHENTICATE,
        properties=v5_props(authentication_method="SCRAM", authentication_data=b"x"),
    )
    pair.send(CLIENT, auth)
    pair.send(SERVER, Auth(reason_code=0, properties=auth.properties))


@pytest.mark.parametrize("version", V3_VERSIONS)
def test_auth_needs_v5(version: int) -> None:
    pair = connected(version)
    with pytest.raises(LocalProtocolError):
        pair.client.send(Auth())
    assert pair.client.state is S.CONNECTED
    with pytest.raises(MalformedPacket):
        pair.feed(CLIENT, b"\xf0\x00")
    assert pair.server.state is S.CLOSED


def test_refused_connect_send_changes_nothing() -> None:
    client = MQTTConnection(CLIENT)
    will = Will(topic="w", properties=v5_props(will_delay_interval=5))
    with pytest.raises(LocalProtocolError):
        client.send(Connect(client_id="c", keepalive=33, will=will))  # will props need v5
    assert client.state is S.IDLE
    assert client.version is None
    assert client.keepalive == 0
    # A good CONNECT still goes through afterwards.
    pair = ConnectionPair(5, client=client)
    pair.connect(Connect(protocol_version=ProtocolVersion.V5, client_id="c", will=will))
    assert client.keepalive == 60


# --- Resuming a session: restore_outgoing / restore_incoming_qos2 --------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_restore_outgoing_resumes_exchanges(version: int) -> None:
    client = MQTTConnection(CLIENT)
    pair = ConnectionPair(version, client=client)
    pair.connect(connack=ConnAck(session_present=version != 3))
    client.restore_outgoing(7, OutgoingState.AWAIT_PUBACK)
    client.restore_outgoing(8, OutgoingState.AWAIT_PUBREC)
    client.restore_outgoing(9, OutgoingState.AWAIT_PUBCOMP)
    assert client.outgoing() == {
        7: OutgoingState.AWAIT_PUBACK,
        8: OutgoingState.AWAIT_PUBREC,
        9: OutgoingState.AWAIT_PUBCOMP,
    }
    assert client.send_quota == DEFAULT_RECEIVE_MAXIMUM - 3
    # Restored ids are in use.
    assert client.next_packet_id() == 1
    client.restore_outgoing(2, OutgoingState.AWAIT_PUBACK)
    assert client.next_packet_id() == 3
    pair.send(CLIENT, Publish(topic="t", qos=1, packet_id=3))
    assert [client.next_packet_id() for _ in range(4)] == [4, 5, 6, 10]
    with pytest.raises(LocalProtocolError):
        client.send(Publish(topic="t", qos=1, packet_id=7))  # not flagged DUP

    # Re-send what was in flight, flagged DUP [MQTT-4.4.0-1]; PUBREL for id 9.
    pair.send(CLIENT, Publish(topic="t", payload=b"7", qos=1, packet_id=7, dup=True))
    pair.send(CLIENT, Publish(topic="t", payload=b"8", qos=2, packet_id=8, dup=True))
    pair.send(CLIENT, PubRel(packet_id=9))
    code = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND if version == 5 else 0
    pair.flush(SERVER, expect=[PubComp(packet_id=9, reason_code=code)])
    assert 9 not in client.outgoing()
    pair.send(SERVER, [PubAck(packet_id=7), PubRec(packet_id=8)])
    pair.flush(CLIENT, expect=[PubRel(packet_id=8)])
    pair.flush(SERVER, expect=[PubComp(packet_id=8)])
    assert client.outgoing() == {2: OutgoingState.AWAIT_PUBACK, 3: OutgoingState.AWAIT_PUBACK}


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_restore_incoming_qos2_gives_exactly_once_across_connections(version: int) -> None:
    # First connection: the QoS 2 PUBLISH arrives, PUBREC is sent, then the link drops.
    first = connected(version)
    publish = Publish(topic="t", payload=b"once", qos=2, packet_id=42)
    first.send(CLIENT, publish)
    first.send(SERVER, PubRec(packet_id=42))
    carried = first.server.incoming_qos2()
    assert carried == [42]

    # Second connection of the same session: the server restores the exchange.
    server = MQTTConnection(SERVER)
    client = MQTTConnection(CLIENT)
    client.restore_outgoing(42, OutgoingState.AWAIT_PUBREC)
    pair = ConnectionPair(version, client=client, server=server)
    pair.connect(Connect(protocol_version=ProtocolVersion(version), clean_start=False))
    for pid in carried:
        server.restore_incoming_qos2(pid)
    assert server.incoming_qos2() == [42]
    # The client did not see the PUBREC, so it re-sends the PUBLISH: not delivered again.
    pair.send(CLIENT, Publish(topic="t", payload=b"once", qos=2, packet_id=42, dup=True), expect=[])
    pair.flush(SERVER, expect=[PubRec(packet_id=42)])
    pair.flush(CLIENT, expect=[PubRel(packet_id=42)])
    pair.flush(SERVER, expect=[PubComp(packet_id=42)])
    assert server.incoming_qos2() == []
    assert client.outgoing() == {}
    # The id is free again: a new message with it is delivered.
    pair.send(CLIENT, Publish(topic="t", payload=b"new", qos=2, packet_id=42))


def test_restored_incoming_qos2_counts_against_receive_maximum() -> None:
    pair = ConnectionPair(5)
    pair.connect(
        Connect(protocol_version=ProtocolVersion.V5, client_id="c", clean_start=False),
        ConnAck(session_present=True, properties=v5_props(receive_maximum=1)),
    )
    pair.server.restore_incoming_qos2(1)
    with pytest.raises(ReceiveMaximumExceeded):
        pair.feed(CLIENT, encode(Publish(topic="t", qos=1, packet_id=2), 5))


@pytest.mark.parametrize("version", [4, 5])
def test_ack_publish_fast_path_matches_send(version: int) -> None:
    """``ack_publish`` produces the bytes and state changes of ``send(PubAck/PubRec)``."""
    for qos, cls in ((1, PubAck), (2, PubRec)):
        fast, slow = MQTTConnection(SERVER), MQTTConnection(SERVER)
        for conn in (fast, slow):
            conn.receive_data(encode(Connect(protocol_version=version, client_id="a"), version))
            conn.send(ConnAck())
            conn.receive_data(encode(Publish(topic="t", qos=qos, packet_id=9), version))
        assert fast.ack_publish(9, qos) == slow.send(cls(packet_id=9))
        assert fast.incoming_qos2() == slow.incoming_qos2()
        # The receive-maximum slot is released alike: a new PUBLISH with the same id is new.
        again = encode(Publish(topic="t", qos=qos, packet_id=9), version)
        assert fast.receive_data(again) == slow.receive_data(again)
    server = MQTTConnection(SERVER)
    server.receive_data(encode(Connect(protocol_version=4, client_id="a"), 4))
    server.send(ConnAck())
    with pytest.raises(LocalProtocolError):
        server.ack_publish(1, 1, 0x10)  # reason codes need MQTT 5
    with pytest.raises(LocalProtocolError):
        server.ack_publish(1, 0)
