"""PROXY protocol v1 and v2 (HAProxy's ``proxy-protocol.txt``), sans-IO.

A load balancer in front of the broker (HAProxy, AWS NLB, GCP TCP proxy, ...) opens each
connection with a header naming the real client; ``ProxyHeaderParser.feed`` consumes it
before any other byte (TLS, HTTP or MQTT) and returns the addresses plus whatever followed
the header. On a listener configured for the PROXY protocol the header is mandatory: any
other first byte fails at once, so a client that bypasses the balancer is refused instead
of being trusted with an address it did not prove.

- v1 is one text line, ``PROXY TCP4 203.0.113.7 10.0.0.1 56324 1883\\r\\n``, at most 107
  bytes with its CRLF (spec §2.1); ``PROXY UNKNOWN ...`` keeps the socket's address.
- v2 is binary: a 12-byte signature, version/command, family/transport, a 16-bit length,
  the addresses and optional TLVs (spec §2.2). The ``LOCAL`` command (health checks) and
  the ``UNSPEC``/``UNIX`` families keep the socket's address.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

__all__ = [
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "ProxyHeaderParser",
    "ProxyInfo",
    "ProxyProtocolError",
]

V1_PREFIX = b"PROXY "
#: spec §2.1: "a receiver may reject any header line longer than 107 bytes" (CRLF included).
V1_MAX_LENGTH = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_HEADER = struct.Struct("!12sBBH")  # signature, version|command, family|transport, length
_V2_FIXED = _V2_HEADER.size  # 16
_INET = struct.Struct("!4s4sHH")
_INET6 = struct.Struct("!16s16sHH")
_TLV = struct.Struct("!BH")

_CMD_LOCAL = 0x0
_CMD_PROXY = 0x1
_FAM_UNSPEC = 0x0
_FAM_INET = 0x1
_FAM_INET6 = 0x2
_FAM_UNIX = 0x3
_TRANSPORT_UNSPEC = 0x0
_TRANSPORT_STREAM = 0x1


class ProxyProtocolError(ValueError):
    """The connection did not start with a valid PROXY protocol header."""


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    """What a PROXY header says about the connection.

    Attributes:
        version: 1 or 2.
        source: the real client's (address, port); None when the header does not carry
            one (v1 ``UNKNOWN``, v2 ``LOCAL``, ``UNSPEC`` or ``UNIX``): keep the socket's.
        destination: the address the client connected to, when given.
        tlvs: v2 type-length-value extensions as (type, value) pairs, in order.
    """

    version: int
    source: tuple[str, int] | None
    destination: tuple[str, int] | None = None
    tlvs: tuple[tuple[int, bytes], ...] = ()


class ProxyHeaderParser:
    """Buffers the start of a connection until its PROXY header is complete.

    ``feed(data)`` returns None while more bytes are needed, then ``(info, rest)`` once,
    where *rest* is what followed the header in the bytes fed so far. It raises
    ``ProxyProtocolError`` as soon as the bytes cannot start a valid header.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> tuple[ProxyInfo, bytes] | None:
        buf = self._buf
        buf += data
        head = bytes(buf[:12])
        if V2_SIGNATURE.startswith(head):
            return self._v2() if len(buf) >= 12 else None
        if V1_PREFIX.startswith(head[:6]):
            return self._v1() if len(buf) >= 6 else None
        raise ProxyProtocolError(f"no PROXY protocol header (the connection starts {head!r})")

    # --- v1 --------------------------------------------------------------------------

    def _v1(self) -> tuple[ProxyInfo, bytes] | None:
        buf = self._buf
        end = buf.find(b"\r\n", 0, V1_MAX_LENGTH)
        if end < 0:
            if len(buf) >= V1_MAX_LENGTH:
                raise ProxyProtocolError(f"v1 header longer than {V1_MAX_LENGTH} bytes")
            return None
        line = bytes(buf[:end])
        rest = bytes(buf[end + 2 :])
        buf.clear()
        return _parse_v1(line), rest

    # --- v2 --------------------------------------------------------------------------

    def _v2(self) -> tuple[ProxyInfo, bytes] | None:
        buf = self._buf
        if len(buf) < _V2_FIXED:
            return None
        _, ver_cmd, fam, length = _V2_HEADER.unpack_from(buf)
        if ver_cmd >> 4 != 2:
            raise ProxyProtocolError(f"v2 header with version {ver_cmd >> 4}")
        total = _V2_FIXED + length
        if len(buf) < total:
            return None
        body = bytes(buf[_V2_FIXED:total])
        rest = bytes(buf[total:])
        buf.clear()
        return _parse_v2(ver_cmd & 0x0F, fam, body), rest


def _parse_v1(line: bytes) -> ProxyInfo:
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("v1 header is not ASCII") from None
    parts = text.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyInfo(1, None)  # "the receiver must ignore anything presented before the CRLF"
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"malformed v1 header {text!r}")
    version = 4 if parts[1] == "TCP4" else 6
    src = _v1_address(parts[2], version)
    dst = _v1_address(parts[3], version)
    return ProxyInfo(1, (src, _v1_port(parts[4])), (dst, _v1_port(parts[5])))


def _v1_address(text: str, version: int) -> str:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyProtocolError(f"bad address {text!r} in v1 header") from None
    if addr.version != version:
        raise ProxyProtocolError(f"address {text!r} is not IPv{version}")
    return str(addr)


def _v1_port(text: str) -> int:
    if not text.isdigit() or len(text) > 5 or int(text) > 0xFFFF:
        raise ProxyProtocolError(f"bad port {text!r} in v1 header")
    return int(text)


def _parse_v2(command: int, fam: int, body: bytes) -> ProxyInfo:
    if command == _CMD_LOCAL:
        return ProxyInfo(2, None, None, _parse_tlvs(body, 0, lenient=True))
    if command != _CMD_PROXY:
        raise ProxyProtocolError(f"v2 header with unknown command {command}")
    family, transport = fam >> 4, fam & 0x0F
    if transport not in (_TRANSPORT_UNSPEC, _TRANSPORT_STREAM):
        raise ProxyProtocolError("v2 header for a datagram connection")
    if family == _FAM_INET:
        if len(body) < _INET.size:
            raise ProxyProtocolError("v2 INET header too short")
        src, dst, sport, dport = _INET.unpack_from(body)
        offset = _INET.size
        source = (str(ipaddress.IPv4Address(src)), sport)
        destination = (str(ipaddress.IPv4Address(dst)), dport)
    elif family == _FAM_INET6:
        if len(body) < _INET6.size:
            raise ProxyProtocolError("v2 INET6 header too short")
        src, dst, sport, dport = _INET6.unpack_from(body)
        offset = _INET6.size
        source = (str(ipaddress.IPv6Address(src)), sport)
        destination = (str(ipaddress.IPv6Address(dst)), dport)
    elif family in (_FAM_UNSPEC, _FAM_UNIX):
        return ProxyInfo(2, None)
    else:
        raise ProxyProtocolError(f"v2 header with unknown address family {family}")
    return ProxyInfo(2, source, destination, _parse_tlvs(body, offset, lenient=False))


def _parse_tlvs(body: bytes, offset: int, *, lenient: bool) -> tuple[tuple[int, bytes], ...]:
    tlvs: list[tuple[int, bytes]] = []
    while offset < len(body):
        if offset + _TLV.size > len(body):
            if lenient:
                break
            raise ProxyProtocolError("v2 header with a truncated TLV")
        kind, length = _TLV.unpack_from(body, offset)
        offset += _TLV.size
        if offset + length > len(body):
            if lenient:
                break
            raise ProxyProtocolError("v2 header with a truncated TLV")
        tlvs.append((kind, body[offset : offset + length]))
        offset += length
    return tuple(tlvs)
