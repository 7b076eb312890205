"""Round trips: ``decode(encode(p, v), v) == p`` for every packet type in every version, and
streams of packets framed correctly by ``PacketReader`` whatever the chunk boundaries."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidemq.protocol import (
    NEED_DATA,
    Connect,
    Packet,
    PacketReader,
    PacketType,
    Publish,
    decode,
    encode,
)

from .strategies import VERSIONS, packet_of, packets, types_for

_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TYPE_VERSION = [(ptype, v) for v in VERSIONS for ptype in types_for(v)]


def _id(param: object) -> str:
    return param.name if isinstance(param, PacketType) else f"v{param}"


@pytest.mark.parametrize(("ptype", "version"), TYPE_VERSION, ids=_id)
@given(data=st.data())
@_SETTINGS
def test_encode_decode_roundtrip(ptype: PacketType, version: int, data: st.DataObject) -> None:
    packet = data.draw(packet_of(ptype, version))
    wire = encode(packet, version)
    assert wire[0] >> 4 == ptype
    decoded = decode(wire, version)
    assert type(decoded) is type(packet)
    assert decoded == packet
    # Encoding is a function of the packet: the decoded copy encodes to the same bytes.
    assert encode(decoded, version) == wire
    # decode accepts any bytes-like object.
    assert decode(bytearray(wire), version) == packet
    assert decode(memoryview(wire), version) == packet


def test_every_type_exists_where_expected() -> None:
    assert len(types_for(5)) == 15
    assert PacketType.AUTH not in types_for(3)
    assert PacketType.AUTH not in types_for(4)
    assert len(TYPE_VERSION) == 14 + 14 + 15


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(data)}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def _read_stream(reader: PacketReader, chunks: list[bytes]) -> list[Packet]:
    out: list[Packet] = []
    for chunk in chunks:
        reader.feed(chunk)
        while True:
            packet = reader.next_packet()
            if packet is NEED_DATA:
                break
            out.append(packet)
    return out


@pytest.mark.parametrize("version", VERSIONS, ids=_id)
@given(data=st.data())
@_SETTINGS
def test_stream_split_at_random_boundaries(version: int, data: st.DataObject) -> None:
    sent = data.draw(st.lists(packets(version), min_size=1, max_size=12), label="packets")
    stream = b"".join(encode(p, version) for p in sent)
    mode = data.draw(st.sampled_from(["cuts", "fixed", "whole"]), label="mode")
    if mode == "cuts":
        cuts = data.draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=40))
        chunks = _split(stream, cuts)
    elif mode == "fixed":
        size = data.draw(st.integers(1, len(stream)), label="chunk size")
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
    else:
        chunks = [stream]
    assert b"".join(chunks) == stream
    reader = PacketReader(version)
    received = _read_stream(reader, chunks)
    assert received == sent
    assert reader.buffered == 0
    assert reader.next_packet() is NEED_DATA


@pytest.mark.parametrize("version", VERSIONS, ids=_id)
@given(data=st.data())
@_SETTINGS
def test_server_stream_starts_with_connect(version: int, data: st.DataObject) -> None:
    """``PacketReader(None)`` learns the protocol level from the CONNECT it frames first."""
    connect = data.draw(packet_of(PacketType.CONNECT, version))
    rest = data.draw(st.lists(packets(version), max_size=8))
    sent = [connect, *rest]
    stream = b"".join(encode(p, version) for p in sent)
    cuts = data.draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=20))
    reader = PacketReader(None)
    assert reader.version is None
    received = _read_stream(reader, _split(stream, cuts))
    assert received == sent
    assert isinstance(received[0], Connect)
    assert reader.version == version


@pytest.mark.parametrize("version", VERSIONS, ids=_id)
def test_one_byte_at_a_time_returns_need_data_until_complete(version: int) -> None:
    packet = Publish(topic="a/b", payload=b"x" * 300, qos=1, packet_id=7)
    wire = encode(packet, version)
    reader = PacketReader(version)
    for i, byte in enumerate(wire):
        reader.feed(bytes((byte,)))
        result = reader.next_packet()
        if i < len(wire) - 1:
            assert result is NEED_DATA
            assert reader.buffered == i + 1
        else:
            assert result == packet
    assert reader.read_all() == []


def test_read_all_returns_every_buffered_packet() -> None:
    sent: list[Packet] = [Publish(topic=f"t/{i}", payload=bytes([i])) for i in range(5)]
    reader = PacketReader(4)
    reader.feed(b"".join(encode(p, 4) for p in sent) + b"\x30")
    assert reader.read_all() == sent
    assert reader.buffered == 1
