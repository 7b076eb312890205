"""The optional C frame scanner (tidemq/transport/_wsframe.c) against a reference written
here from RFC 6455 §5.2/§5.3, and the WebSocket fast path with and without it: same bytes to
the MQTT layer, same frames back, same hand-over to wsproto, for any stream cut anyhow.

.ci/run builds the extension and sets TIDEMQ_TEST_EXPECT_SPEEDUPS=1, so a build that
silently fell back to Python fails there instead of skipping."""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.transport.test_websocket_frames import feed, upgraded
from tidemq.transport import websocket

try:
    from tidemq.transport._wsframe import scan
except ImportError:  # pragma: no cover - an install without a C compiler
    scan = None  # type: ignore[assignment]

EXPECT = os.environ.get("TIDEMQ_TEST_EXPECT_SPEEDUPS") == "1"
needs_c = pytest.mark.skipif(
    scan is None and not EXPECT, reason="C extension not built (no compiler at install)"
)


def test_extension_is_built_when_expected() -> None:
    if EXPECT:
        assert scan is not None
        assert websocket.C_SCANNER
    assert websocket.C_SCANNER is (scan is not None)


def reference_scan(buf: bytes, pos: int, limit: int) -> tuple[bytes, int]:
    """What scan() must do, byte by byte."""
    out = bytearray()
    while len(buf) - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1]
        n = b1 & 0x7F
        head = 2
        if b0 != 0x82 or not b1 & 0x80 or n == 127:
            break
        if n == 126:
            if len(buf) - pos < 4:
                break
            n = int.from_bytes(buf[pos + 2 : pos + 4], "big")
            if n < 126:
                break
            head = 4
        start = pos + head + 4
        if n > limit or start + n > len(buf):
            break
        key = buf[start - 4 : start]
        out += bytes(b ^ key[i % 4] for i, b in enumerate(buf[start : start + n]))
        pos = start + n
    return bytes(out), pos


def build(first: int, payload: bytes, key: bytes | None, length_form: str) -> bytes:
    n = len(payload)
    mbit = 0x80 if key is not None else 0
    if length_form == "short" and n < 126:
        head = bytes([first, mbit | n])
    elif length_form == "64":
        head = struct.pack("!BBQ", first, mbit | 127, n)
    else:  # 16-bit, minimal or (for n < 126) not
        head = struct.pack("!BBH", first, mbit | 126, n)
    if key is None:
        return head + payload
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


# Mostly well-formed binary frames (all the fast path takes), with every other kind mixed in.
FIRST_BYTES = st.sampled_from([0x82] * 8 + [0x89, 0x8A, 0x81, 0x02, 0x80, 0xC2, 0x88, 0x92])
frames = st.builds(
    build,
    FIRST_BYTES,
    st.one_of(st.binary(max_size=20), st.binary(min_size=120, max_size=300)),
    st.one_of(st.binary(min_size=4, max_size=4), st.none()),
    st.sampled_from(["short"] * 6 + ["16", "64"]),
)
streams = st.lists(frames, max_size=12).map(b"".join)
# Limits around the payload sizes drawn, so that frames of exactly the limit and one byte
# over it come up often.
limits = st.one_of(st.integers(0, 22), st.sampled_from([119, 120, 125, 126, 127, 200, 65536]))


@needs_c
@settings(max_examples=400, deadline=None)
@given(streams, st.data(), limits)
def test_scan_matches_the_reference(stream: bytes, data: st.DataObject, limit: int) -> None:
    assert scan is not None
    cut = data.draw(st.integers(0, len(stream)), label="truncated at")
    buf = stream[:cut]
    pos = data.draw(st.integers(0, len(buf)), label="pos")
    assert scan(buf, pos, limit) == reference_scan(buf, pos, limit)


@needs_c
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 70000))
def test_scan_on_garbage(buf: bytes, limit: int) -> None:
    assert scan is not None
    for pos in (0, len(buf) // 3, len(buf)):
        assert scan(buf, pos, limit) == reference_scan(buf, pos, limit)


@needs_c
def test_scan_unmasks_every_length_and_alignment() -> None:
    assert scan is not None
    key = b"\x01\x80\xfe\x7f"
    for n in range(0, 300):
        payload = os.urandom(n)
        for prefix in (b"", b"x", b"xyz"):  # the payload at every offset modulo 8
            buf = prefix + build(0x82, payload, key, "short")
            assert scan(buf, len(prefix), 65536) == (payload, len(buf))
    # bytearray and memoryview are read too (the buffer protocol).
    one = build(0x82, b"hello", key, "short")
    assert scan(bytearray(one), 0, 10) == (b"hello", len(one))
    assert scan(memoryview(one), 0, 10) == (b"hello", len(one))


@needs_c
@pytest.mark.parametrize("limit", [0, 1, 7, 125, 126, 300])
def test_scan_stops_at_a_frame_over_the_limit(limit: int) -> None:
    assert scan is not None
    key = b"\x00\x11\x22\x33"
    at = build(0x82, b"a" * limit, key, "short" if limit < 126 else "16")
    over = build(0x82, b"b" * (limit + 1), key, "short" if limit + 1 < 126 else "16")
    assert scan(at + over, 0, limit) == (b"a" * limit, len(at))
    assert scan(over + at, 0, limit) == (b"", 0)


@needs_c
def test_scan_refuses_bad_arguments() -> None:
    assert scan is not None
    with pytest.raises(ValueError, match="pos"):
        scan(b"ab", 3, 10)
    with pytest.raises(ValueError, match="pos"):
        scan(b"ab", -1, 10)
    with pytest.raises(TypeError):
        scan("text", 0, 10)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        scan(b"ab", 0)  # type: ignore[call-arg]


async def run_fast_path(
    stream: bytes, cuts: list[int], limit: int, use_c: bool
) -> tuple[bytes, bytes, bool, bool]:
    saved = websocket._c_scan
    websocket._c_scan = scan if use_c else None
    try:
        conn, handler, transport = await upgraded(max_frame_size=limit)
        feed(conn, stream, cuts)
        await asyncio.sleep(0)  # let a close the connection scheduled run
        return bytes(handler.data), bytes(transport.out), conn._fast_in, transport.closed
    finally:
        websocket._c_scan = saved


@needs_c
@settings(max_examples=200, deadline=None)
@given(streams, st.data(), limits)
def test_fast_path_is_the_same_with_and_without_c(
    stream: bytes, data: st.DataObject, limit: int
) -> None:
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(stream))), max_size=6))))
    with_c = asyncio.run(run_fast_path(stream, cuts, limit, True))
    without = asyncio.run(run_fast_path(stream, cuts, limit, False))
    assert with_c == without


@needs_c
def test_no_extensions_in_the_environment_uses_the_python_path() -> None:
    code = "from tidemq.transport import websocket; print(websocket.C_SCANNER)"
    env = {**os.environ, "TIDEMQ_NO_EXTENSIONS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, timeout=30, check=True
    )
    assert out.stdout.strip() == b"False"
    env["TIDEMQ_NO_EXTENSIONS"] = ""
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, timeout=30, check=True
    )
    assert out.stdout.strip() == b"True"
