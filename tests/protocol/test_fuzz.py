"""Garbage in, and the decoder keeps its contract.

Whatever bytes arrive, ``PacketReader.next_packet`` and ``decode`` may only return packets,
return ``NEED_DATA``, or raise a ``RemoteProtocolError`` (the peer broke the protocol). Any
other exception (IndexError, ValueError, UnicodeDecodeError, AssertionError, ...) is a bug.
Every packet the decoder does return must be a packet the encoder can reproduce.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import mqttbytes as mb
from tidemq.protocol import (
    NEED_DATA,
    NO_PROPERTIES,
    Connect,
    MalformedPacket,
    Packet,
    PacketReader,
    PacketTooLarge,
    PacketType,
    Properties,
    Publish,
    ReasonCode,
    RemoteProtocolError,
    SubAck,
    decode,
    encode,
)

from .strategies import VERSIONS, packet_of, packets

_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

READER_VERSIONS: list[int | None] = [None, 3, 4, 5]


def _check_error(exc: RemoteProtocolError) -> None:
    assert isinstance(exc.reason_code, ReasonCode)
    assert exc.reason_code >= 0x80, "a protocol error carries a failure reason code"
    assert str(exc)


def _check_reencodes(packet: Packet, version: int) -> None:
    """A packet the decoder accepted is one the encoder can write back, unchanged."""
    if version == 3 and isinstance(packet, SubAck) and 0x80 in packet.reason_codes:
        # The decoder tolerates the 3.1.1 Failure code from 3.1 servers that send it anyway;
        # our encoder never writes it on 3.1 (3.1 has no failure code).
        return
    wire = encode(packet, version)
    assert decode(wire, version) == packet


def _drain(reader: PacketReader, data: bytes) -> list[Packet]:
    """Feed *data*; collect packets until NEED_DATA or a RemoteProtocolError."""
    reader.feed(data)
    out: list[Packet] = []
    while True:
        version = reader.version
        try:
            packet = reader.next_packet()
        except RemoteProtocolError as exc:
            _check_error(exc)
            return out
        if packet is NEED_DATA:
            return out
        assert isinstance(packet, Packet)
        assert reader.version is not None
        if version is None:
            assert isinstance(packet, Connect)
        _check_reencodes(packet, reader.version)
        out.append(packet)


def _decode_contract(data: bytes, version: int | None) -> None:
    try:
        packet = decode(data, version)  # type: ignore[arg-type]
    except RemoteProtocolError as exc:
        _check_error(exc)
    else:
        assert isinstance(packet, Packet)


# --- random bytes -------------------------------------------------------------------------


@pytest.mark.parametrize("version", READER_VERSIONS)
@given(data=st.binary(max_size=400))
@_SETTINGS
def test_random_bytes(version: int | None, data: bytes) -> None:
    _drain(PacketReader(version), data)
    _decode_contract(data, version)


@st.composite
def _framed_garbage(draw: st.DrawFn) -> bytes:
    """One or more frames with a correct remaining length around random bodies, so the
    bytes reach the per-type decoders instead of waiting for more data."""
    frames = []
    for _ in range(draw(st.integers(1, 3))):
        ptype = draw(st.integers(0, 15))
        flags = draw(st.sampled_from([0, 2, draw(st.integers(0, 15))]))
        body = draw(st.binary(max_size=120))
        frames.append(mb.packet((ptype << 4) | flags, body))
    return b"".join(frames)


@pytest.mark.parametrize("version", READER_VERSIONS)
@given(data=_framed_garbage())
@_SETTINGS
def test_framed_random_bodies(version: int | None, data: bytes) -> None:
    _drain(PacketReader(version), data)
    _decode_contract(data, version)


# --- mutated valid packets ----------------------------------------------------------------


@st.composite
def _mutate(draw: st.DrawFn, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "dup"]))
        i = draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and buf:
            buf[i] = draw(
                st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))])
            )
        elif op == "insert":
            buf.insert(i, draw(st.integers(0, 255)))
        elif op == "delete" and buf:
            del buf[i]
        elif op == "truncate":
            del buf[i:]
        elif op == "dup":
            j = draw(st.integers(i, len(buf)))
            buf[i:i] = buf[i:j]
    return bytes(buf)


def _split_frame(wire: bytes) -> tuple[int, bytes]:
    """(first byte, body) of one encoded packet."""
    i = 1
    while wire[i] & 0x80:
        i += 1
    return wire[0], wire[i + 1 :]


@pytest.mark.parametrize("version", VERSIONS)
@given(data=st.data())
@_SETTINGS
def test_mutated_packets(version: int, data: st.DataObject) -> None:
    sent = data.draw(st.lists(packets(version), min_size=1, max_size=3))
    wire = b"".join(encode(p, version) for p in sent)
    mutated = data.draw(_mutate(wire))
    _drain(PacketReader(version), mutated)
    _decode_contract(mutated, version)


@pytest.mark.parametrize("version", VERSIONS)
@given(data=st.data())
@_SETTINGS
def test_mutated_bodies_with_consistent_length(version: int, data: st.DataObject) -> None:
    """Mutate the body, then re-frame it so the remaining length matches: this reaches the
    field decoders (a short field inside a complete frame, a bad flag, a bad code...)."""
    packet = data.draw(packets(version))
    first, body = _split_frame(encode(packet, version))
    if data.draw(st.booleans()):
        first ^= 1 << data.draw(st.integers(0, 3))
    mutated = mb.packet(first, data.draw(_mutate(body)) if body else body)
    _drain(PacketReader(version), mutated)
    _decode_contract(mutated, version)


@pytest.mark.parametrize("version", VERSIONS)
@given(data=st.data())
@_SETTINGS
def test_mutated_connect_before_version_is_known(version: int, data: st.DataObject) -> None:
    """The server side: ``PacketReader(None)`` frames a (damaged) CONNECT and what follows."""
    connect = data.draw(packet_of(PacketType.CONNECT, version))
    rest = data.draw(st.lists(packets(version), max_size=2))
    wire = b"".join(encode(p, version) for p in [connect, *rest])
    if data.draw(st.booleans()):
        mutated = data.draw(_mutate(wire))
    else:
        first, body = _split_frame(encode(connect, version))
        mutated = mb.packet(first, data.draw(_mutate(body)))
    _drain(PacketReader(None), mutated)
    _decode_contract(mutated, None)


# --- truncation ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@given(data=st.data())
@settings(max_examples=60, deadline=None)
def test_every_prefix_needs_more_data(version: int, data: st.DataObject) -> None:
    packet = data.draw(packets(version))
    wire = encode(packet, version)
    readers: list[int | None] = [version]
    if isinstance(packet, Connect):
        readers.append(None)
    for reader_version in readers:
        for n in range(len(wire)):
            reader = PacketReader(reader_version)
            reader.feed(wire[:n])
            assert reader.next_packet() is NEED_DATA, f"prefix of {n} bytes"
            assert reader.buffered == n
            with pytest.raises(MalformedPacket):
                decode(wire[:n], version)
        reader = PacketReader(reader_version)
        reader.feed(wire)
        assert reader.next_packet() == packet


@pytest.mark.parametrize("version", VERSIONS)
@given(data=st.data())
@settings(max_examples=60, deadline=None)
def test_every_truncated_body_is_rejected_or_decoded(version: int, data: st.DataObject) -> None:
    """A frame whose remaining length says the body is shorter than it was."""
    packet = data.draw(packets(version))
    first, body = _split_frame(encode(packet, version))
    for n in range(len(body)):
        for reader_version in (version, None) if isinstance(packet, Connect) else (version,):
            _drain(PacketReader(reader_version), mb.packet(first, body[:n]))


# --- maximum packet size and the remaining length -----------------------------------------


@pytest.mark.parametrize(
    "first", [0x10, 0x20, 0x30, 0x3D, 0x40, 0x62, 0x82, 0x90, 0xA2, 0xB0, 0xE0, 0xF0]
)
@pytest.mark.parametrize("remaining", [998, 1_000, 16_384, 2_097_152, 268_435_455])
def test_max_packet_size_enforced_from_fixed_header(first: int, remaining: int) -> None:
    header = bytes((first,)) + mb.varint(remaining)
    reader = PacketReader(4, max_packet_size=1000)
    for i in range(len(header) - 1):
        reader.feed(header[i : i + 1])
        assert reader.next_packet() is NEED_DATA
    reader.feed(header[-1:])
    with pytest.raises(PacketTooLarge) as info:
        reader.next_packet()
    assert info.value.reason_code == 0x95  # Packet too large
    assert reader.buffered <= len(header)


def test_max_packet_size_before_connect() -> None:
    reader = PacketReader(None, max_packet_size=1000)
    reader.feed(b"\x10" + mb.varint(100_000))
    with pytest.raises(PacketTooLarge):
        reader.next_packet()


def test_max_packet_size_is_the_whole_packet() -> None:
    """The limit counts the fixed header too: 1 + 2 + 997 = 1000 bytes is accepted."""
    at_limit = mb.gen_publish("t", payload=b"x" * (997 - 3))
    assert len(at_limit) == 1000
    reader = PacketReader(4, max_packet_size=1000)
    reader.feed(at_limit)
    assert reader.next_packet() == Publish(topic="t", payload=b"x" * 994)
    over = mb.gen_publish("t", payload=b"x" * 995)
    assert len(over) == 1001
    reader.feed(over[:3])
    with pytest.raises(PacketTooLarge):
        reader.next_packet()


def test_protocol_maximum_is_accepted_by_default() -> None:
    """268,435,455 is the largest remaining length; by default it is waited for."""
    reader = PacketReader(4)
    reader.feed(b"\x30\xff\xff\xff\x7f")
    assert reader.next_packet() is NEED_DATA


@pytest.mark.parametrize("version", READER_VERSIONS)
@pytest.mark.parametrize(
    "data",
    [
        b"\x30\x80\x80\x80\x80\x01",
        b"\x30\xff\xff\xff\xff\x7f" + b"\x00" * 8,
        b"\xc0\x80\x80\x80\x80",
        b"\x10\xff\xff\xff\x80",
    ],
)
def test_remaining_length_of_five_bytes_is_malformed(version: int | None, data: bytes) -> None:
    """A Variable Byte Integer has at most four bytes [MQTT-1.5.5-1]."""
    reader = PacketReader(version)
    reader.feed(data)
    with pytest.raises(MalformedPacket) as info:
        reader.next_packet()
    assert info.value.reason_code == ReasonCode.MALFORMED_PACKET
    with pytest.raises(MalformedPacket):
        decode(data, version)  # type: ignore[arg-type]


MIB = 1 << 20


@pytest.mark.parametrize(
    ("version", "chunk"),
    [(4, 1), (5, 7), (4, 7), (3, 65_536), (5, 65_536), (5, MIB + 100)],
)
def test_one_mib_publish_in_chunks(version: int, chunk: int) -> None:
    payload = os.urandom(MIB)
    props = Properties(user_properties=(("k", "v"),)) if version == 5 else NO_PROPERTIES
    big = Publish(topic="big/payload", payload=payload, qos=1, packet_id=4242, properties=props)
    tail = Publish(topic="after", payload=b"z")
    wire = encode(big, version)
    assert len(wire) > MIB
    stream = wire + encode(tail, version)
    reader = PacketReader(version, max_packet_size=2 * MIB)
    got: list[Packet] = []
    fed = 0
    for i in range(0, len(stream), chunk):
        reader.feed(stream[i : i + chunk])
        fed = min(i + chunk, len(stream))
        while True:
            packet = reader.next_packet()
            if packet is NEED_DATA:
                break
            got.append(packet)
        if fed < len(wire):
            assert got == []
    assert got == [big, tail]
    assert isinstance(got[0], Publish)
    assert got[0].payload == payload
    assert reader.buffered == 0
