"""``PacketReader.read_batch``: the receive path's batch decoder agrees with ``next_packet``.

``read_batch`` decodes common PUBLISH packets inline (a topic seen before, no properties) and
hands everything else to the general decoder. Whatever the bytes, both ways of reading a stream
must give the same packets in the same order and fail with the same error at the same place.
The streams repeat PUBLISH packets so that their topics are cached and the inline path runs,
then mutate them (flags, lengths, packet ids, topic bytes) so that it meets bad input too.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import mqttbytes as mb
from tidemq.protocol import (
    NEED_DATA,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PacketReader,
    PacketTooLarge,
    PingReq,
    ProtocolViolation,
    PubAck,
    Publish,
    RemoteProtocolError,
    TopicNameInvalid,
    encode,
)

from .strategies import VERSIONS, packets

pytestmark = pytest.mark.timeout(120)

_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Outcome = tuple[list[Packet], type[RemoteProtocolError] | None]


def _read_all(
    version: int | None, chunks: list[bytes], take: Callable[[PacketReader], list[Packet]]
) -> Outcome:
    """Feed *chunks* one by one, taking packets with *take* until it returns none."""
    reader = PacketReader(version)
    out: list[Packet] = []
    for chunk in chunks:
        reader.feed(chunk)
        while True:
            try:
                got = take(reader)
            except RemoteProtocolError as exc:
                return out, type(exc)
            if not got:
                break
            out.extend(got)
    return out, None


def _one(reader: PacketReader) -> list[Packet]:
    packet = reader.next_packet()
    return [] if packet is NEED_DATA else [packet]


def _batch(reader: PacketReader) -> list[Packet]:
    batch = reader.read_batch()
    # CONNECT, CONNACK and DISCONNECT end a batch.
    assert not any(type(p) in (Connect, ConnAck, Disconnect) for p in batch[:-1])
    return batch


def _by_next_packet(version: int | None, chunks: list[bytes]) -> Outcome:
    return _read_all(version, chunks, _one)


def _by_batch(version: int | None, chunks: list[bytes]) -> Outcome:
    return _read_all(version, chunks, _batch)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, last = [], 0
    for p in [*points, len(data)]:
        chunks.append(data[last:p])
        last = p
    return chunks


@st.composite
def _publish_stream(draw: st.DrawFn, version: int) -> bytes:
    """Valid packets with repeated PUBLISH (cached topics), a few of them mutated."""
    topic = draw(st.sampled_from(["a", "sensors/42/temp", "x/" + "y" * 200]))
    size = draw(st.sampled_from([0, 1, 64, 200, 1024, 20_000]))
    pieces: list[bytes] = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.integers(0, 9))
        if kind <= 5:
            qos = draw(st.integers(0, 2))
            pieces.append(
                mb.gen_publish(
                    topic,
                    qos=qos,
                    payload=b"p" * size,
                    retain=draw(st.booleans()),
                    dup=bool(qos) and draw(st.booleans()),
                    mid=draw(st.integers(1, 65535)) if qos else 0,
                    proto_ver=version,
                )
            )
        elif kind <= 7:
            pieces.append(encode(draw(packets(version)), version))
        else:
            qos = draw(st.integers(0, 2))
            raw = bytearray(mb.gen_publish(topic, qos=qos, mid=5, proto_ver=version))
            at = draw(st.integers(0, len(raw) - 1))
            raw[at] = draw(st.integers(0, 255))
            pieces.append(bytes(raw))
    return b"".join(pieces)


@pytest.mark.parametrize("version", VERSIONS)
@given(data=st.data())
@_SETTINGS
def test_batch_matches_next_packet(version: int, data: st.DataObject) -> None:
    stream = data.draw(_publish_stream(version))
    chunks = _split(stream, data.draw(st.lists(st.integers(0, 1 << 20), max_size=4)))
    assert _by_batch(version, chunks) == _by_next_packet(version, chunks)


@pytest.mark.parametrize("version", [None, 3, 4, 5])
@given(data=st.binary(max_size=300))
@_SETTINGS
def test_batch_matches_next_packet_on_garbage(version: int | None, data: bytes) -> None:
    level = version or 4
    warm = mb.gen_publish("t", proto_ver=level)
    # Decode one valid PUBLISH first so "t" is a cached topic for the garbage that follows.
    assert _by_batch(level, [warm * 2 + data]) == _by_next_packet(level, [warm * 2 + data])
    assert _by_batch(version, [data]) == _by_next_packet(version, [data])


def test_batch_ends_after_disconnect() -> None:
    pub = mb.gen_publish("t", payload=b"1")
    reader = PacketReader(4)
    reader.feed(pub * 3 + mb.gen_disconnect() + pub)
    first = reader.read_batch()
    assert [type(p) for p in first] == [Publish, Publish, Publish, Disconnect]
    assert [type(p) for p in reader.read_batch()] == [Publish]
    assert reader.read_batch() == []
    assert reader.buffered == 0


def test_batch_ends_after_connect_and_connack() -> None:
    reader = PacketReader(None)
    reader.feed(mb.gen_connect("c", proto_ver=5) + mb.gen_pingreq())
    assert [type(p) for p in reader.read_batch()] == [Connect]
    assert reader.version == 5
    assert [type(p) for p in reader.read_batch()] == [PingReq]
    client = PacketReader(4)
    client.feed(mb.gen_connack(rc=0) + mb.gen_publish("t"))
    assert [type(p) for p in client.read_batch()] == [ConnAck]
    assert [type(p) for p in client.read_batch()] == [Publish]


def test_error_after_good_packets_is_raised_by_the_next_call() -> None:
    pub = mb.gen_publish("t", payload=b"ok")
    bad = mb.gen_publish("t", qos=1, mid=0)  # packet id 0 [MQTT-2.2.1-3]
    reader = PacketReader(4)
    reader.feed(pub + pub + bad + pub)
    batch = reader.read_batch()
    assert [p.payload for p in batch if isinstance(p, Publish)] == [b"ok", b"ok"]
    with pytest.raises(ProtocolViolation):
        reader.read_batch()


@pytest.mark.parametrize("version", [4, 5])
def test_inline_path_still_refuses(version: int) -> None:
    pub = mb.gen_publish("t", proto_ver=version)
    cases: list[tuple[bytes, type[RemoteProtocolError]]] = [
        (mb.packet(0x36, pub[2:]), RemoteProtocolError),  # QoS 3
        (mb.packet(0x38, pub[2:]), RemoteProtocolError),  # DUP on QoS 0
        (mb.gen_publish("t/+", proto_ver=version), TopicNameInvalid),
        (mb.gen_publish("", proto_ver=version), RemoteProtocolError),
    ]
    for tail, error in cases:
        reader = PacketReader(version)
        reader.feed(pub + tail)
        assert [type(p) for p in reader.read_batch()] == [Publish]
        with pytest.raises(error):
            reader.read_batch()


def test_inline_path_checks_the_maximum_packet_size() -> None:
    small = mb.gen_publish("t", payload=b"s")
    big = mb.gen_publish("t", payload=b"b" * 200)
    reader = PacketReader(4, max_packet_size=100)
    reader.feed(small + big)
    assert len(reader.read_batch()) == 1
    with pytest.raises(PacketTooLarge):
        reader.read_batch()


def test_read_all_returns_every_packet_across_batches() -> None:
    pub = mb.gen_publish("t", qos=1, mid=9, payload=b"x" * 300)
    reader = PacketReader(4)
    reader.feed(pub + mb.gen_pingreq() + pub + mb.gen_puback(9) + pub)
    got = reader.read_all()
    assert [type(p) for p in got] == [Publish, PingReq, Publish, PubAck, Publish]
