"""``WebSocketConnection`` without a socket: frames fed in every possible cut, so both the
fast path (complete masked binary frames, pings) and the hand-over to wsproto (anything
else) are exercised at every byte boundary. The frames are built by the test helper, not
by the code under test."""

from __future__ import annotations

import asyncio
import os
import random
import struct

import pytest

from tests.helpers.ws import BINARY, CLOSE, CONT, PING, TEXT, frame
from tidemq.transport import websocket
from tidemq.transport.stream import ListenerState, WriteBatcher
from tidemq.transport.websocket import FAST_FRAME_MAX, WebSocketConnection, WebSocketOptions

UPGRADE = (
    b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


@pytest.fixture(autouse=True, params=["c", "python"])
def scanner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with the C frame scanner (when built) and with the pure-Python
    loop that replaces it (tests/transport/test_wsframe.py compares the two directly)."""
    if request.param == "c":
        if websocket._c_scan is None:
            if os.environ.get("TIDEMQ_TEST_EXPECT_SPEEDUPS") == "1":
                pytest.fail("the C frame scanner was expected to be built")
            pytest.skip("C extension not built (no compiler at install)")
    else:
        monkeypatch.setattr(websocket, "_c_scan", None)
    return str(request.param)


class Handler:
    def __init__(self) -> None:
        self.data = bytearray()
        self.calls = 0
        self.lost = False

    def data_received(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        self.data += data
        self.calls += 1

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True


class Transport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1234) if name == "peername" else default

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.out += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of the unmasked frames the server wrote."""
    out = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        n, pos = b1 & 0x7F, pos + 2
        if n == 126:
            (n,) = struct.unpack_from("!H", data, pos)
            pos += 2
        elif n == 127:
            (n,) = struct.unpack_from("!Q", data, pos)
            pos += 8
        out.append((b0 & 0x0F, data[pos : pos + n]))
        pos += n
    return out


async def upgraded(
    max_frame_size: int = 2 * 1024 * 1024,
) -> tuple[WebSocketConnection, Handler, Transport]:
    handler = Handler()
    transport = Transport()
    conn = WebSocketConnection(
        lambda link: handler,
        WriteBatcher(asyncio.get_running_loop()),
        "ws",
        ListenerState("ws"),
        WebSocketOptions(max_frame_size=max_frame_size),
    )
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(UPGRADE)
    assert transport.out.startswith(b"HTTP/1.1 101 ")
    transport.out.clear()
    return conn, handler, transport


def feed(conn: WebSocketConnection, stream: bytes, cuts: list[int]) -> None:
    start = 0
    for cut in [*cuts, len(stream)]:
        if cut > start:
            conn.data_received(stream[start:cut])
        start = cut


def cuttings(stream: bytes) -> list[list[int]]:
    rng = random.Random(len(stream))
    every = list(range(1, len(stream)))
    return [
        [],  # all at once
        every,  # byte by byte
        sorted(rng.sample(every, min(len(every), 20))),
        sorted(rng.sample(every, min(len(every), 3))),
    ]


PAYLOADS = [b"\x30\x05\x00\x01ab", os.urandom(125), os.urandom(126), os.urandom(300), b""]


@pytest.mark.parametrize("cut", range(4))
async def test_binary_frames_in_any_cut(cut: int) -> None:
    stream = (
        b"".join(frame(BINARY, p) for p in PAYLOADS)
        + frame(PING, b"hi")
        + frame(BINARY, b"after ping")
    )
    conn, handler, transport = await upgraded()
    feed(conn, stream, cuttings(stream)[cut])
    assert bytes(handler.data) == b"".join(PAYLOADS) + b"after ping"
    assert server_frames(bytes(transport.out)) == [(0xA, b"hi")]  # the pong
    assert conn._fast_in  # nothing unusual: never left the fast path
    if cut == 0:
        assert handler.calls == 1  # one read, one call


@pytest.mark.parametrize("cut", range(4))
async def test_fragmented_message_hands_over_to_wsproto(cut: int) -> None:
    first = b"\x01" * 10
    stream = (
        frame(BINARY, first)
        + frame(BINARY, b"part1-", fin=False)
        + frame(PING, b"p")
        + frame(CONT, b"part2")
        + frame(BINARY, b"then plain")
    )
    conn, handler, transport = await upgraded()
    feed(conn, stream, cuttings(stream)[cut])
    assert bytes(handler.data) == first + b"part1-part2then plain"
    assert server_frames(bytes(transport.out)) == [(0xA, b"p")]
    assert not conn._fast_in


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (frame(TEXT, b"text"), 1003),
        (frame(BINARY, b"x", mask=False), 1002),
        (frame(BINARY, b"x", rsv1=True), 1002),
        (frame(PING, b"x" * 126), 1002),
        (frame(CONT, b"x"), 1002),
        (frame(CLOSE, b"\x03\xe8bye"), 1000),
        (b"\x82\xfe\x00\x05" + bytes(4) + b"short", 1002),  # 16-bit length for 5 bytes
    ],
)
@pytest.mark.parametrize("cut", range(4))
async def test_handover_keeps_what_came_before_and_closes_with_the_right_code(
    bad: bytes, code: int, cut: int
) -> None:
    stream = frame(BINARY, b"good") + bad + frame(BINARY, b"never")
    conn, handler, transport = await upgraded()
    feed(conn, stream, cuttings(stream)[cut])
    assert bytes(handler.data) == b"good"
    frames = server_frames(bytes(transport.out))
    assert frames[-1][0] == 0x8
    assert struct.unpack("!H", frames[-1][1][:2])[0] == code
    assert transport.closed


async def test_large_frames_go_through_wsproto() -> None:
    big = os.urandom(FAST_FRAME_MAX + 1)
    stream = frame(BINARY, b"small") + frame(BINARY, big) + frame(BINARY, b"small again")
    conn, handler, _ = await upgraded()
    feed(conn, stream, list(range(1000, len(stream), 7000)))
    assert bytes(handler.data) == b"small" + big + b"small again"
    assert not conn._fast_in


@pytest.mark.parametrize("size", [50, 51])
async def test_short_frame_over_a_small_limit_is_refused(size: int) -> None:
    conn, handler, transport = await upgraded(max_frame_size=50)
    feed(conn, frame(BINARY, b"s" * 10) + frame(BINARY, b"z" * size), [])
    if size <= 50:
        assert bytes(handler.data) == b"s" * 10 + b"z" * size
        assert not transport.closed
    else:
        assert bytes(handler.data) == b"s" * 10
        (opcode, payload), *_ = server_frames(bytes(transport.out))
        assert (opcode, struct.unpack("!H", payload[:2])[0]) == (0x8, 1009)
        assert transport.closed


@pytest.mark.parametrize("size", [1024, 1025])
async def test_frame_size_limit_in_either_path(size: int) -> None:
    conn, handler, transport = await upgraded(max_frame_size=1024)
    feed(conn, frame(BINARY, b"y" * size), [])
    if size <= 1024:
        assert bytes(handler.data) == b"y" * size
        assert not transport.closed
    else:
        assert handler.data == b""
        (opcode, payload), *_ = server_frames(bytes(transport.out))
        assert (opcode, struct.unpack("!H", payload[:2])[0]) == (0x8, 1009)
        assert transport.closed


async def test_outbound_frames() -> None:
    conn, _, transport = await upgraded()
    for size in (0, 125, 126, 65535, 65536, 70000):
        transport.out.clear()
        conn.write(b"z" * size)
        conn.flush()
        assert server_frames(bytes(transport.out)) == [(BINARY, b"z" * size)]
