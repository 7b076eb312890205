"""Wire primitives (MQTT 5.0 §1.5): integers, variable byte integers, UTF-8 strings, binary.

Decoders take ``(buf, pos, end)`` over a ``bytes`` or ``bytearray`` and return
``(value, new_pos)``; they never slice the buffer except to produce the value itself, so a
packet body is decoded in place without first being copied out of the receive buffer.
Running past ``end`` raises ``MalformedPacket``: inside a complete frame, a short field means
the peer lied about a length.
"""

from __future__ import annotations

from types import FunctionType
from typing import Final

from .errors import LocalProtocolError, MalformedPacket

Buffer = bytes | bytearray


def _probe() -> None:
    """A Python function when this module is interpreted, a C function once compiled."""


# True when the package runs as its mypyc build (``TIDEMQ_MYPYC=1 pip install .``, see
# setup.py, which compiles the modules of tidemq.protocol together).
COMPILED: Final = not isinstance(_probe, FunctionType)


MAX_VARINT = 268_435_455  # four bytes of seven bits, MQTT 5.0 §1.5.5
MAX_UTF8_BYTES = 65_535  # the two-byte length prefix, MQTT 5.0 §1.5.4

_U16 = [i.to_bytes(2, "big") for i in range(256)]  # small fast path for lengths < 256


def u16(value: int) -> bytes:
    if value < 256:
        return _U16[value]
    return value.to_bytes(2, "big")


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def varint(value: int) -> bytes:
    """Encode a Variable Byte Integer; at most four bytes [MQTT-1.5.5-1]."""
    if 0 <= value < 128:
        return bytes((value,))
    if value > MAX_VARINT or value < 0:
        raise LocalProtocolError(f"variable byte integer out of range: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def utf8(value: str) -> bytes:
    data = value.encode("utf-8")
    if len(data) > MAX_UTF8_BYTES:
        raise LocalProtocolError(f"UTF-8 string longer than {MAX_UTF8_BYTES} bytes")
    return u16(len(data)) + data


def binary(value: bytes) -> bytes:
    if len(value) > MAX_UTF8_BYTES:
        raise LocalProtocolError(f"binary data longer than {MAX_UTF8_BYTES} bytes")
    return u16(len(value)) + value


def check_utf8(value: str, what: str) -> None:
    """Validate a user-supplied string as MQTT UTF-8 [MQTT-1.5.4-1], [MQTT-1.5.4-2]."""
    if "\x00" in value:
        raise LocalProtocolError(f"{what} contains U+0000", rule="[MQTT-1.5.4-2]")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        raise LocalProtocolError(
            f"{what} contains a surrogate code point", rule="[MQTT-1.5.4-1]"
        ) from None
    if len(encoded) > MAX_UTF8_BYTES:
        raise LocalProtocolError(f"{what} longer than {MAX_UTF8_BYTES} bytes")


# --- decoding -----------------------------------------------------------------------------


def read_u8(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    if pos >= end:
        raise MalformedPacket("packet ends inside a byte field")
    return buf[pos], pos + 1


def read_u16(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    nxt = pos + 2
    if nxt > end:
        raise MalformedPacket("packet ends inside a two-byte integer")
    return (buf[pos] << 8) | buf[pos + 1], nxt


def read_u32(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    nxt = pos + 4
    if nxt > end:
        raise MalformedPacket("packet ends inside a four-byte integer")
    return int.from_bytes(buf[pos:nxt], "big"), nxt


def read_varint(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    value = 0
    shift = 0
    for i in range(4):
        if pos >= end:
            raise MalformedPacket("packet ends inside a variable byte integer")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if i and byte == 0:
                # Non-minimal encodings are not allowed [MQTT-1.5.5-1].
                raise MalformedPacket(
                    "variable byte integer not minimally encoded", rule="[MQTT-1.5.5-1]"
                )
            return value, pos
        shift += 7
    raise MalformedPacket("variable byte integer longer than four bytes", rule="[MQTT-1.5.5-1]")


def read_binary(buf: Buffer, pos: int, end: int) -> tuple[bytes, int]:
    if pos + 2 > end:
        raise MalformedPacket("packet ends inside a length prefix")
    nxt = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if nxt > end:
        raise MalformedPacket("length prefix runs past the end of the packet")
    return bytes(buf[pos + 2 : nxt]), nxt


def read_utf8(buf: Buffer, pos: int, end: int) -> tuple[str, int]:
    if pos + 2 > end:
        raise MalformedPacket("packet ends inside a string length")
    nxt = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if nxt > end:
        raise MalformedPacket("string runs past the end of the packet")
    try:
        # The strict codec rejects ill-formed UTF-8 and encoded surrogates [MQTT-1.5.4-1].
        value = buf[pos + 2 : nxt].decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket("string is not well-formed UTF-8", rule="[MQTT-1.5.4-1]") from None
    if "\x00" in value:
        raise MalformedPacket("string contains U+0000", rule="[MQTT-1.5.4-2]")
    return value, nxt
