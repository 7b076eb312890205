"""Peer codecs for the codec micro-benchmark (``bench/codec.py``).

Measures MQTT 3.1.1 encode/decode throughput of two third-party Python codecs so that
TideMQ's own codec can be shown beside them in the same run:

* ``amqtt`` 0.12.1 -- the packet classes of the amqtt broker (``amqtt.mqtt.*``).  Its decoder
  is async: ``MQTTFixedHeader.from_stream(reader)``, then ``packet_class(header)`` and
  ``cls.from_stream(reader, fixed_header=header)``, exactly as the broker's reader loop
  (``amqtt.mqtt.protocol.handler.ProtocolHandler._reader_loop``) does.  The reader is amqtt's
  own in-memory adapter ``amqtt.adapters.BufferReader`` (default) or, with ``reader="stream"``,
  the adapter the broker uses on TCP, ``StreamReaderAdapter`` over an ``asyncio.StreamReader``
  that was fed the whole buffer.  No read ever suspends, so the figures are codec cost plus the
  coroutine overhead that amqtt always pays.  Encoding is ``packet.to_bytes()``.
* ``mqtt-codec`` (PyPI; MQTT 3.1.1 only) -- ``MqttFixedHeader.decode(f)`` followed by
  ``<class>.decode_body(header, f)``, which is what ``MqttPacketBody.decode`` does, with a
  dispatch on the packet type as a connection would need.  ``f`` is any object with ``read``:
  ``io.BytesIO`` (default) or the library's own ``mqtt_codec.io.BytesReader``.  Encoding is
  ``packet.encode(f)`` into an ``io.BytesIO``.

Every function takes the raw bytes of ONE packet, built by the caller, so that all codecs are
fed identical bytes.  Decoding works on one buffer holding ``copies`` copies of it back to back,
decoded one packet at a time.  Encoding builds the packet object from the field values (taken
from the raw bytes by a small stdlib parser here, not by the peer) and serialises it; with
``build=False`` only the serialisation of one prebuilt packet object is timed.

``*_reencode`` (also given the packet ids) measure what a broker does when one QoS 1/2 PUBLISH
fans out: produce its bytes again for another receiver, with that receiver's packet id.  amqtt:
set ``packet_id`` on one prebuilt ``PublishPacket`` and call ``to_bytes()``; mqtt-codec
(immutable packets): build ``MqttPublish(pid, ...)`` and ``encode`` it.  The packet ids come
from the caller, so every codec gets the same sequence.

Before any timing each function checks that the peer really decodes the packet (fields compared
with the stdlib parse, whole buffer consumed) or encodes it byte for byte; the timed loops also
count the packets they decode.  A failed check raises ``PeerCheckError``.

Throughput is ops/s from ``time.perf_counter``; the iteration count is fixed per measurement:
chosen by a calibration run so that one repeat takes about ``TARGET_SECONDS``, unless given.
The best of ``REPEATS`` repeats is returned.  Peers are imported lazily: this module imports
without them, and ``available()`` says which are installed.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import io
import math
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "PEERS",
    "PEER_OPS",
    "REPEATS",
    "TARGET_SECONDS",
    "PacketFields",
    "PeerCheckError",
    "PeerUnavailable",
    "amqtt_decode",
    "amqtt_encode",
    "amqtt_reencode",
    "available",
    "mqtt_codec_decode",
    "mqtt_codec_encode",
    "mqtt_codec_reencode",
    "parse_packet",
    "sample_packets",
    "with_packet_id",
]

REPEATS = 3
TARGET_SECONDS = 0.6
DEFAULT_COPIES = 10_000

# peer name -> distribution name on PyPI, and the module that must import
PEERS: dict[str, tuple[str, str]] = {
    "amqtt": ("amqtt", "amqtt.mqtt.publish"),
    "mqtt-codec": ("mqtt-codec", "mqtt_codec.packet"),
}

_CONNECT = 1
_PUBLISH = 3
_SUBSCRIBE = 8


class PeerUnavailable(ImportError):
    """The peer codec is not installed in this interpreter."""


class PeerCheckError(AssertionError):
    """A peer did not decode or encode the benchmark packet correctly."""


# --------------------------------------------------------------------------- availability


def available() -> dict[str, str]:
    """Peers that import in this interpreter, mapped to their installed versions."""
    found: dict[str, str] = {}
    for name, (dist, module) in PEERS.items():
        try:
            importlib.import_module(module)
            found[name] = importlib.metadata.version(dist)
        except Exception:  # any import failure means "not installed"
            continue
    return found


def _require(name: str) -> None:
    dist, module = PEERS[name]
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise PeerUnavailable(f"{name} is not installed (pip install {dist})") from exc


# --------------------------------------------------------------------------- reference parsing


@dataclass(frozen=True, slots=True)
class PacketFields:
    """Fields of a CONNECT, PUBLISH or SUBSCRIBE packet, parsed with the stdlib only."""

    packet_type: int
    flags: int
    topic: str = ""
    payload: bytes = b""
    qos: int = 0
    packet_id: int | None = None
    client_id: str = ""
    keep_alive: int = 0
    clean_session: bool = False
    username: str | None = None
    password: str | None = None
    filters: tuple[tuple[str, int], ...] = ()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _frame(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def sample_packets() -> dict[str, bytes]:
    """Reference MQTT 3.1.1 packets for the benchmark cases, built with the stdlib only."""
    topic = "sensors/42/temp"
    small, large = bytes(range(64)), bytes(i & 0xFF for i in range(1024))

    def publish(payload: bytes, qos: int) -> bytes:
        pid = struct.pack("!H", 1) if qos else b""
        return _frame(0x30 | qos << 1, _str(topic) + pid + payload)

    connect = _frame(
        0x10,
        _str("MQTT")
        + bytes([4, 0xC2])  # level 4; flags: username, password, clean session
        + struct.pack("!H", 60)
        + _str("bench-client")
        + _str("bench-user")
        + _str("bench-pass"),
    )
    subscribe = _frame(0x82, struct.pack("!H", 1) + _str("sensors/+/temp") + b"\x01")
    return {
        "publish_64_q0": publish(small, 0),
        "publish_64_q1": publish(small, 1),
        "publish_1k_q0": publish(large, 0),
        "publish_1k_q1": publish(large, 1),
        "connect": connect,
        "subscribe": subscribe,
    }


def parse_packet(raw: bytes) -> PacketFields:
    """Parse one CONNECT, PUBLISH or SUBSCRIBE packet (MQTT 3.1.1) that fills ``raw`` exactly."""
    first = raw[0]
    ptype, flags = first >> 4, first & 0x0F
    length, mult, pos = 0, 1, 1
    while True:
        byte = raw[pos]
        pos += 1
        length += (byte & 0x7F) * mult
        mult <<= 7
        if not byte & 0x80:
            break
    if pos + length != len(raw):
        raise ValueError(f"raw holds {len(raw)} bytes, packet is {pos + length}")

    def u16() -> int:
        nonlocal pos
        (v,) = struct.unpack_from("!H", raw, pos)
        pos += 2
        return int(v)

    def string() -> str:
        nonlocal pos
        n = u16()
        pos += n
        return raw[pos - n : pos].decode()

    if ptype == _PUBLISH:
        qos = (flags >> 1) & 3
        topic = string()
        pid = u16() if qos else None
        return PacketFields(ptype, flags, topic=topic, payload=raw[pos:], qos=qos, packet_id=pid)
    if ptype == _CONNECT:
        if string() != "MQTT" or raw[pos] != 4:
            raise ValueError("only MQTT 3.1.1 CONNECT is supported")
        cflags = raw[pos + 1]
        pos += 2
        if cflags & 0x04:
            raise ValueError("CONNECT with a will is not supported here")
        keep_alive = u16()
        client_id = string()
        username = string() if cflags & 0x80 else None
        password = string() if cflags & 0x40 else None
        return PacketFields(
            ptype,
            flags,
            client_id=client_id,
            keep_alive=keep_alive,
            clean_session=bool(cflags & 0x02),
            username=username,
            password=password,
        )
    if ptype == _SUBSCRIBE:
        pid = u16()
        filters: list[tuple[str, int]] = []
        while pos < len(raw):
            name = string()
            filters.append((name, raw[pos]))
            pos += 1
        return PacketFields(ptype, flags, packet_id=pid, filters=tuple(filters))
    raise ValueError(f"packet type {ptype} is not one of the benchmark cases")


def with_packet_id(raw: bytes, packet_id: int) -> bytes:
    """``raw`` (a QoS 1/2 PUBLISH, MQTT 3.1.1) with its packet id replaced by ``packet_id``."""
    want = parse_packet(raw)
    if want.packet_type != _PUBLISH or not want.qos:
        raise ValueError("only a QoS 1/2 PUBLISH has a packet id to replace")
    at = len(raw) - len(want.payload) - 2
    return raw[:at] + struct.pack("!H", packet_id) + raw[at + 2 :]


def _check(ok: bool, peer: str, what: str, got: object, want: object) -> None:
    if not ok:
        raise PeerCheckError(f"{peer}: {what}: got {got!r}, expected {want!r}")


# --------------------------------------------------------------------------- timing


def _best_rate(run: Callable[[int], tuple[float, int]], n: int, ops_per_unit: int) -> float:
    """Best ops/s over REPEATS runs of ``run(n)``, which returns (elapsed seconds, ops done)."""
    best = math.inf
    for _ in range(REPEATS):
        elapsed, done = run(n)
        if done != n * ops_per_unit:
            raise PeerCheckError(f"timed run did {done} ops, expected {n * ops_per_unit}")
        best = min(best, elapsed)
    return n * ops_per_unit / best


def _units_for(seconds_per_unit: float) -> int:
    return max(1, math.ceil(TARGET_SECONDS / max(seconds_per_unit, 1e-9)))


def _calibrate(run: Callable[[int], tuple[float, int]]) -> int:
    """Units of ``run`` that take about TARGET_SECONDS (grows a trial run to >= 50 ms)."""
    n = 64
    while True:
        elapsed, _ = run(n)
        if elapsed >= 0.05:
            return _units_for(elapsed / n)
        n *= 4


def _report(verbose: bool, label: str, units: int, per_unit: int, rate: float) -> None:
    if verbose:
        print(f"  {label}: {units} x {per_unit} ops, best of {REPEATS}: {rate:,.0f} ops/s")


# --------------------------------------------------------------------------- amqtt


def _amqtt_check(pkt: Any, want: PacketFields) -> None:
    p = "amqtt"
    _check(
        pkt.fixed_header.packet_type == want.packet_type,
        p,
        "type",
        pkt.fixed_header.packet_type,
        want.packet_type,
    )
    got: tuple[object, ...]
    exp: tuple[object, ...]
    if want.packet_type == _PUBLISH:
        got = (pkt.topic_name, pkt.data, pkt.qos, pkt.packet_id)
        exp = (want.topic, want.payload, want.qos, want.packet_id)
    elif want.packet_type == _CONNECT:
        got = (pkt.client_id, pkt.keep_alive, pkt.clean_session_flag, pkt.username, pkt.password)
        exp = (want.client_id, want.keep_alive, want.clean_session, want.username, want.password)
    else:
        got = (pkt.variable_header.packet_id, tuple(pkt.payload.topics))
        exp = (want.packet_id, want.filters)
    _check(got == exp, p, "decoded fields", got, exp)


def amqtt_decode(
    raw: bytes,
    *,
    copies: int = DEFAULT_COPIES,
    passes: int | None = None,
    reader: Literal["buffer", "stream"] = "buffer",
    verbose: bool = False,
) -> float:
    """amqtt decode ops/s of ``raw`` (one packet), from a buffer of ``copies`` copies of it.

    Each op is ``MQTTFixedHeader.from_stream`` + ``packet_class`` + ``cls.from_stream``, as in
    amqtt's reader loop.  ``reader``: ``"buffer"`` = ``amqtt.adapters.BufferReader`` (cheapest),
    ``"stream"`` = ``StreamReaderAdapter`` over a pre-fed ``asyncio.StreamReader`` (the broker's
    TCP path).  ``passes`` over the whole buffer per repeat; default: calibrated.
    """
    _require("amqtt")
    from amqtt.adapters import BufferReader, StreamReaderAdapter
    from amqtt.mqtt import packet_class
    from amqtt.mqtt.packet import MQTTFixedHeader

    want = parse_packet(raw)
    buf = raw * copies
    from_header = MQTTFixedHeader.from_stream

    def make_reader() -> Any:
        if reader == "buffer":
            return BufferReader(buf)
        sr = asyncio.StreamReader(limit=len(buf) + 1)
        sr.feed_data(buf)
        sr.feed_eof()
        return StreamReaderAdapter(sr)

    async def decode_all(rd: Any) -> tuple[int, Any]:
        pkt: Any = None
        done = 0
        for _ in range(copies):
            header = await from_header(rd)
            pkt = await packet_class(header).from_stream(rd, fixed_header=header)
            done += 1
        return done, pkt

    async def timed(n: int) -> tuple[float, int]:
        total, done = 0.0, 0
        for _ in range(n):
            rd = make_reader()
            t0 = time.perf_counter()
            k, _last = await decode_all(rd)
            total += time.perf_counter() - t0
            done += k
        return total, done

    async def verify() -> float:
        rd = make_reader()
        first_hdr = await from_header(rd)
        first = await packet_class(first_hdr).from_stream(rd, fixed_header=first_hdr)
        _amqtt_check(first, want)
        rd = make_reader()
        t0 = time.perf_counter()
        k, last = await decode_all(rd)
        elapsed = time.perf_counter() - t0
        _check(k == copies, "amqtt", "packets decoded", k, copies)
        _amqtt_check(last, want)
        rest = await rd.read(-1)
        _check(rest == b"", "amqtt", "bytes left after the buffer", rest, b"")
        return elapsed

    loop = asyncio.new_event_loop()
    try:
        one_pass = loop.run_until_complete(verify())
        units = passes if passes is not None else _units_for(one_pass)
        rate = _best_rate(lambda n: loop.run_until_complete(timed(n)), units, copies)
    finally:
        loop.close()
    _report(verbose, f"amqtt decode ({reader})", units, copies, rate)
    return rate


def _amqtt_builder(want: PacketFields) -> Callable[[], Any]:
    """A function that builds a fresh amqtt packet object for ``want``, the way amqtt does."""
    from amqtt.mqtt.connect import ConnectPacket, ConnectPayload, ConnectVariableHeader
    from amqtt.mqtt.publish import PublishPacket
    from amqtt.mqtt.subscribe import SubscribePacket

    if want.packet_type == _PUBLISH:
        build_pub = PublishPacket.build
        topic, payload, pid, qos = want.topic, want.payload, want.packet_id, want.qos
        return lambda: build_pub(topic, payload, pid, False, qos, False)
    if want.packet_type == _CONNECT:
        cflags = (
            (0x80 if want.username is not None else 0)
            | (0x40 if want.password is not None else 0)
            | (0x02 if want.clean_session else 0)
        )
        w = want
        return lambda: ConnectPacket(
            variable_header=ConnectVariableHeader(cflags, w.keep_alive, "MQTT", 4),
            payload=ConnectPayload(w.client_id, None, None, w.username, w.password),
        )
    build_sub = SubscribePacket.build
    filters, sub_pid = want.filters, want.packet_id
    return lambda: build_sub(list(filters), sub_pid)


def amqtt_encode(
    raw: bytes,
    *,
    iterations: int | None = None,
    build: bool = True,
    verbose: bool = False,
) -> float:
    """amqtt encode ops/s of the packet in ``raw``.

    An op builds the packet object from its field values (``PublishPacket.build``,
    ``ConnectPacket(...)``, ``SubscribePacket.build``) and calls ``to_bytes()``; with
    ``build=False`` it is only ``to_bytes()`` of one prebuilt object.  The output is checked
    to equal ``raw`` byte for byte first.
    """
    _require("amqtt")
    want = parse_packet(raw)
    make = _amqtt_builder(want)
    out = make().to_bytes()
    _check(out == raw, "amqtt", "encoded bytes", out, raw)
    prebuilt = make()
    _check(prebuilt.to_bytes() == raw, "amqtt", "re-encoded bytes", prebuilt.to_bytes(), raw)

    def run(n: int) -> tuple[float, int]:
        done = 0
        if build:
            t0 = time.perf_counter()
            for _ in range(n):
                make().to_bytes()
                done += 1
        else:
            to_bytes = prebuilt.to_bytes
            t0 = time.perf_counter()
            for _ in range(n):
                to_bytes()
                done += 1
        return time.perf_counter() - t0, done

    units = iterations if iterations is not None else _calibrate(run)
    rate = _best_rate(run, units, 1)
    _report(verbose, f"amqtt encode (build={build})", units, 1, rate)
    return rate


def amqtt_reencode(
    raw: bytes,
    packet_ids: Sequence[int],
    *,
    passes: int | None = None,
    verbose: bool = False,
) -> float:
    """amqtt ops/s of producing the QoS 1/2 PUBLISH in ``raw`` again for another receiver.

    An op sets ``packet_id`` on one prebuilt ``PublishPacket`` (amqtt packets are mutable)
    and calls ``to_bytes()``; one pass walks ``packet_ids``.  Each output is checked against
    ``raw`` with the packet id replaced before timing.
    """
    _require("amqtt")
    want = parse_packet(raw)
    pkt = _amqtt_builder(want)()
    for pid in packet_ids:
        pkt.packet_id = pid
        got = pkt.to_bytes()
        exp = with_packet_id(raw, pid)
        _check(got == exp, "amqtt", f"re-encoded bytes for packet id {pid}", got, exp)
    pids = list(packet_ids)

    def run(n: int) -> tuple[float, int]:
        done = 0
        to_bytes = pkt.to_bytes
        t0 = time.perf_counter()
        for _ in range(n):
            for pid in pids:
                pkt.packet_id = pid
                to_bytes()
            done += len(pids)
        return time.perf_counter() - t0, done

    units = passes if passes is not None else _calibrate(run)
    rate = _best_rate(run, units, len(pids))
    _report(verbose, "amqtt re-encode", units, len(pids), rate)
    return rate


# --------------------------------------------------------------------------- mqtt-codec


def _mqtt_codec_check(pkt: Any, want: PacketFields) -> None:
    p = "mqtt-codec"
    _check(int(pkt.packet_type) == want.packet_type, p, "type", pkt.packet_type, want.packet_type)
    got: tuple[object, ...]
    exp: tuple[object, ...]
    if want.packet_type == _PUBLISH:
        got = (pkt.topic, pkt.payload, pkt.qos, pkt.packet_id)
        # mqtt-codec reports packet_id 0 for QoS 0 (it has none on the wire)
        exp = (want.topic, want.payload, want.qos, want.packet_id or 0)
    elif want.packet_type == _CONNECT:
        got = (pkt.client_id, pkt.keep_alive, pkt.clean_session, pkt.username, pkt.password)
        exp = (want.client_id, want.keep_alive, want.clean_session, want.username, want.password)
    else:
        got = (pkt.packet_id, tuple((t.name, t.max_qos) for t in pkt.topics))
        exp = (want.packet_id, want.filters)
    _check(got == exp, p, "decoded fields", got, exp)


def mqtt_codec_decode(
    raw: bytes,
    *,
    copies: int = DEFAULT_COPIES,
    passes: int | None = None,
    reader: Literal["bytesio", "bytesreader"] = "bytesio",
    verbose: bool = False,
) -> float:
    """mqtt-codec decode ops/s of ``raw`` (one packet), from a buffer of ``copies`` copies.

    Each op is ``MqttFixedHeader.decode(f)``, a dispatch on ``header.packet_type`` and
    ``cls.decode_body(header, f)`` with the body-length check of ``MqttPacketBody.decode``.
    ``reader``: ``"bytesio"`` = ``io.BytesIO`` (cheapest), ``"bytesreader"`` =
    ``mqtt_codec.io.BytesReader``.  ``passes`` over the buffer per repeat; default: calibrated.
    """
    _require("mqtt-codec")
    from mqtt_codec.io import BytesReader
    from mqtt_codec.packet import (
        MqttConnect,
        MqttControlPacketType,
        MqttFixedHeader,
        MqttPublish,
        MqttSubscribe,
    )

    classes: dict[Any, Any] = {
        MqttControlPacketType.connect: MqttConnect,
        MqttControlPacketType.publish: MqttPublish,
        MqttControlPacketType.subscribe: MqttSubscribe,
    }
    want = parse_packet(raw)
    buf = raw * copies
    decode_header = MqttFixedHeader.decode

    def make_reader() -> Any:
        return io.BytesIO(buf) if reader == "bytesio" else BytesReader(buf)

    def decode_all(f: Any) -> tuple[int, Any]:
        pkt: Any = None
        done = 0
        for _ in range(copies):
            _, header = decode_header(f)
            consumed, pkt = classes[header.packet_type].decode_body(header, f)
            if consumed != header.remaining_len:
                raise PeerCheckError("mqtt-codec: body length differs from remaining length")
            done += 1
        return done, pkt

    def run(n: int) -> tuple[float, int]:
        total, done = 0.0, 0
        for _ in range(n):
            f = make_reader()
            t0 = time.perf_counter()
            k, _last = decode_all(f)
            total += time.perf_counter() - t0
            done += k
        return total, done

    # the library's own one-call decode (MqttPacketBody.decode) agrees with the loop below
    _, first = classes[MqttControlPacketType(want.packet_type)].decode(make_reader())
    _mqtt_codec_check(first, want)
    f = make_reader()
    t0 = time.perf_counter()
    k, last = decode_all(f)
    one_pass = time.perf_counter() - t0
    _check(k == copies, "mqtt-codec", "packets decoded", k, copies)
    _mqtt_codec_check(last, want)
    rest = f.read(1)
    _check(rest == b"", "mqtt-codec", "bytes left after the buffer", rest, b"")

    units = passes if passes is not None else _units_for(one_pass)
    rate = _best_rate(run, units, copies)
    _report(verbose, f"mqtt-codec decode ({reader})", units, copies, rate)
    return rate


def _mqtt_codec_builder(want: PacketFields) -> Callable[[], Any]:
    """A function that builds a fresh (immutable) mqtt-codec packet object for ``want``."""
    from mqtt_codec.packet import MqttConnect, MqttPublish, MqttSubscribe, MqttTopic

    if want.packet_type == _PUBLISH:
        topic, payload, pid, qos = want.topic, want.payload, want.packet_id or 0, want.qos
        return lambda: MqttPublish(pid, topic, payload, False, qos, False)
    if want.packet_type == _CONNECT:
        w = want
        return lambda: MqttConnect(
            w.client_id, w.clean_session, w.keep_alive, w.username, w.password
        )
    filters, sub_pid = want.filters, want.packet_id
    return lambda: MqttSubscribe(sub_pid, [MqttTopic(name, qos) for name, qos in filters])


def _mqtt_codec_serialize(pkt: Any) -> bytes:
    f = io.BytesIO()
    pkt.encode(f)
    return f.getvalue()


def mqtt_codec_encode(
    raw: bytes,
    *,
    iterations: int | None = None,
    build: bool = True,
    verbose: bool = False,
) -> float:
    """mqtt-codec encode ops/s of the packet in ``raw``.

    An op constructs the packet object (``MqttPublish(...)`` etc.; note the constructor itself
    encodes the body once to learn its length) and writes it with ``encode(f)`` into an
    ``io.BytesIO``; with ``build=False`` only ``encode`` of one prebuilt object is timed.
    The output is checked to equal ``raw`` byte for byte first.
    """
    _require("mqtt-codec")
    want = parse_packet(raw)
    make = _mqtt_codec_builder(want)
    out = _mqtt_codec_serialize(make())
    _check(out == raw, "mqtt-codec", "encoded bytes", out, raw)
    prebuilt = make()
    _check(
        _mqtt_codec_serialize(prebuilt) == raw,
        "mqtt-codec",
        "re-encoded bytes",
        _mqtt_codec_serialize(prebuilt),
        raw,
    )
    bytes_io = io.BytesIO

    def run(n: int) -> tuple[float, int]:
        done = 0
        if build:
            t0 = time.perf_counter()
            for _ in range(n):
                f = bytes_io()
                make().encode(f)
                f.getvalue()
                done += 1
        else:
            encode = prebuilt.encode
            t0 = time.perf_counter()
            for _ in range(n):
                f = bytes_io()
                encode(f)
                f.getvalue()
                done += 1
        return time.perf_counter() - t0, done

    units = iterations if iterations is not None else _calibrate(run)
    rate = _best_rate(run, units, 1)
    _report(verbose, f"mqtt-codec encode (build={build})", units, 1, rate)
    return rate


def mqtt_codec_reencode(
    raw: bytes,
    packet_ids: Sequence[int],
    *,
    passes: int | None = None,
    verbose: bool = False,
) -> float:
    """mqtt-codec ops/s of producing the QoS 1/2 PUBLISH in ``raw`` again for another receiver.

    mqtt-codec packets are immutable, so an op builds ``MqttPublish(pid, ...)`` and writes it
    with ``encode`` into an ``io.BytesIO``; one pass walks ``packet_ids``.  Each output is
    checked against ``raw`` with the packet id replaced before timing.
    """
    _require("mqtt-codec")
    from mqtt_codec.packet import MqttPublish

    want = parse_packet(raw)
    if want.packet_type != _PUBLISH or not want.qos:
        raise ValueError("re-encoding needs a QoS 1/2 PUBLISH")
    topic, payload, qos = want.topic, want.payload, want.qos
    for pid in packet_ids:
        got = _mqtt_codec_serialize(MqttPublish(pid, topic, payload, False, qos, False))
        exp = with_packet_id(raw, pid)
        _check(got == exp, "mqtt-codec", f"re-encoded bytes for packet id {pid}", got, exp)
    pids = list(packet_ids)
    bytes_io = io.BytesIO

    def run(n: int) -> tuple[float, int]:
        done = 0
        t0 = time.perf_counter()
        for _ in range(n):
            for pid in pids:
                f = bytes_io()
                MqttPublish(pid, topic, payload, False, qos, False).encode(f)
                f.getvalue()
            done += len(pids)
        return time.perf_counter() - t0, done

    units = passes if passes is not None else _calibrate(run)
    rate = _best_rate(run, units, len(pids))
    _report(verbose, "mqtt-codec re-encode", units, len(pids), rate)
    return rate


# --------------------------------------------------------------------------- registry

# peer -> operation -> fn(raw_packet_bytes, **options) -> ops/s ("reencode" also takes the
# packet ids).  Check available() first: calling a function of a peer that is not installed
# raises PeerUnavailable.
PEER_OPS: dict[str, dict[str, Callable[..., float]]] = {
    "amqtt": {"decode": amqtt_decode, "encode": amqtt_encode, "reencode": amqtt_reencode},
    "mqtt-codec": {
        "decode": mqtt_codec_decode,
        "encode": mqtt_codec_encode,
        "reencode": mqtt_codec_reencode,
    },
}


def _main() -> None:
    peers = available()
    print("peers:", ", ".join(f"{n} {peers.get(n, 'not installed')}" for n in PEERS))
    for case, raw in sample_packets().items():
        print(f"{case} ({len(raw)} B)")
        for name, ops in PEER_OPS.items():
            if name not in peers:
                print(f"  {name}: not installed")
                continue
            for op, fn in ops.items():
                if op == "reencode":
                    if not parse_packet(raw).qos:
                        continue
                    rate = fn(raw, list(range(1, 1001)))
                else:
                    rate = fn(raw)
                print(f"  {name:<10} {op:<6} {rate:>12,.0f} ops/s")


if __name__ == "__main__":
    _main()
