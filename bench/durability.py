"""Durability benchmark (issue 6): persistent-session QoS 1 on SQLite beside memory and Mosquitto.

N pairs (default 20).  Subscriber i connects with clean session OFF as ``dur-sub-i``,
subscribes to ``dur/<run>/i`` at QoS 1 and PUBACKs every delivery; publisher i (clean
session, ``dur-pub-<run>-i``) publishes 64-byte QoS 1 messages to that topic with at most W
(default 50) unacknowledged and at most R (``--recv-window``, default 50) not yet delivered
to its subscriber: a closed loop.  The second bound keeps the broker's queues short: a broker
that PUBACKs faster than it delivers would otherwise grow a queue all run long (and measure
its queue limit rather than its throughput).  After a 1 s warm-up, D seconds (default 10) are
measured: deliveries/s received by the subscribers, the publishers' PUBACK latency p50/p99,
broker CPU % (``/proc/PID/stat`` over exactly that window) and the load generator's CPU %.
Publishing then stops and a drain waits for the last deliveries; every payload carries its
pair and sequence number, so ``lost`` counts messages whose PUBACK the publisher received but
that never reached the subscriber, and ``dup`` messages received twice.

Brokers, each started fresh per run (fresh data directory) and pinned to CPU 0:

* ``tidemq-sqlite-sync``  ``tidemq serve --storage.backend sqlite --storage.durability sync``
  (the default: PUBACK only after the group commit is fsynced),
* ``tidemq-sqlite-batch`` the same with ``--storage.durability batch`` (no fsync wait),
* ``tidemq-memory``       ``--storage.backend memory`` (nothing survives a restart),
* ``mosquitto``           Mosquitto with ``persistence true`` (snapshot every
  ``autosave_interval`` = 1800 s, its default; nothing is written per message).

The load generator is this file too (``durability.py loadgen ...``): hand-built MQTT 3.1.1
over raw ``asyncio.Protocol``s on uvloop when installed, in its own process pinned to CPU 1,
so that it stays cheap (mqload has no persistent-session option).  Repetitions alternate the
broker order; the table shows medians and the ratios sqlite / memory (target: sqlite-sync
>= 0.5x memory) and each / Mosquitto.

    python bench/durability.py                         # 3 reps x 4 brokers x 10 s (~4 min)
    python bench/durability.py --write-docs            # ... and update docs/benchmarks.md
    python bench/durability.py --duration 1 --reps 1 --pairs 4      # smoke test
    python bench/durability.py -b tidemq-sqlite-sync -b tidemq-memory
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- durability:begin -->", "<!-- durability:end -->"
MQB_DIR = Path(os.environ.get("MQB_DIR", "/tmp/mqbench"))

BROKERS = ("tidemq-sqlite-sync", "tidemq-sqlite-batch", "tidemq-memory", "mosquitto")
MEMORY, SYNC = "tidemq-memory", "tidemq-sqlite-sync"
TARGET = 0.5  # issue 6: durable QoS 1 on SQLite >= 0.5x the in-memory figure of the same run

PAYLOAD = 64
KEEPALIVE = 300  # seconds; every connection is busy throughout, this only has to outlast a run
CONNECT_TIMEOUT = 10.0
DRAIN_MAX = 20.0  # hard cap on the drain, whatever still trickles in


# =========================================================================== MQTT bytes


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


def connect_packet(client_id: str, *, clean: bool) -> bytes:
    flags = 0x02 if clean else 0x00
    body = _str("MQTT") + bytes([4, flags]) + struct.pack("!H", KEEPALIVE) + _str(client_id)
    return _frame(0x10, body)


def subscribe_packet(topic: str, packet_id: int = 1) -> bytes:
    return _frame(0x82, struct.pack("!H", packet_id) + _str(topic) + b"\x01")


DISCONNECT = b"\xe0\x00"
PUBACK_HEAD = b"\x40\x02"
# PUBLISH tail after the topic: packet id, then the payload head: pair, sequence, send time (ns)
_PUB_TAIL = struct.Struct("!HIQq")
_PAYLOAD_HEAD = struct.Struct("!IQq")
_PAD = bytes(PAYLOAD - _PAYLOAD_HEAD.size)


def publish_prefix(topic: str) -> bytes:
    """Fixed header + topic of a QoS 1 PUBLISH with a PAYLOAD-byte payload (packet id follows)."""
    t = _str(topic)
    return bytes([0x32]) + _varint(len(t) + 2 + PAYLOAD) + t


def _varint_at(buf: bytearray, i: int, n: int) -> tuple[int, int]:
    """(remaining length, index after it) from ``buf[i:]``, or (-1, -1) if incomplete."""
    length, mult = 0, 1
    while i < n:
        byte = buf[i]
        i += 1
        length += (byte & 0x7F) * mult
        if not byte & 0x80:
            return length, i
        mult <<= 7
        if mult > 1 << 21:
            raise ValueError("malformed remaining length")
    return -1, -1


# =========================================================================== load generator


class LoadError(Exception):
    """The broker refused or dropped a connection, or sent something unexpected."""


class _Conn(asyncio.Protocol):
    """One MQTT connection: frames incoming bytes, batches its replies into one write."""

    def __init__(self, gen: LoadGen, client_id: str, *, clean: bool) -> None:
        loop = asyncio.get_running_loop()
        self.gen = gen
        self.client_id = client_id
        self.clean = clean
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[tuple[int, int]] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport; same interface
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(connect_packet(self.client_id, clean=self.clean))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        if not self.closing:
            self.gen.error(f"{self.client_id}: connection closed by the broker ({exc})")
        if not self.connack.done():
            self.connack.set_exception(LoadError(f"{self.client_id}: closed before CONNACK"))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        n = len(buf)
        pos = 0
        out: list[bytes | bytearray] = []
        now = time.perf_counter_ns()
        while n - pos >= 2:
            second = buf[pos + 1]
            if second < 0x80:  # every packet of this benchmark is short
                length, start = second, pos + 2
            else:
                length, start = _varint_at(buf, pos + 1, n)
                if start < 0:
                    break
            end = start + length
            if end > n:
                break
            self.packet(buf[pos], buf, start, end, out, now)
            pos = end
        if pos:
            del buf[:pos]
        self.after(out, now)
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def packet(
        self,
        first: int,
        buf: bytearray,
        start: int,
        end: int,
        out: list[bytes | bytearray],
        now: int,
    ) -> None:
        ptype = first >> 4
        if ptype == 2 and not self.connack.done():
            if end - start != 2:
                self.connack.set_exception(LoadError(f"{self.client_id}: bad CONNACK"))
            else:
                self.connack.set_result((buf[start], buf[start + 1]))
        elif ptype != 13:  # PINGRESP is harmless; anything else here is a surprise
            self.gen.error(f"{self.client_id}: unexpected packet type {ptype}")

    def after(self, out: list[bytes | bytearray], now: int) -> None:
        """Called once per read, after its packets: a chance to add to the batched write."""

    def close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(DISCONNECT)
            self.transport.close()


class _Bits:
    """A growable bitmap of sequence numbers (one byte each: cheap to test and set)."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = bytearray(1 << 16)

    def grow(self, seq: int) -> None:
        size = len(self.data)
        while size <= seq:
            size *= 2
        self.data.extend(bytes(size - len(self.data)))


class Subscriber(_Conn):
    def __init__(self, gen: LoadGen, index: int, topic: str) -> None:
        super().__init__(gen, f"dur-sub-{index}", clean=False)
        self.index = index
        self.topic = topic
        self.suback: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.received = _Bits()
        self.count = 0  # deliveries, duplicates included
        self.unique = 0
        self.dup = 0
        self.misrouted = 0
        self.bad_qos = 0
        self.publisher: Publisher | None = None  # the pair's publisher, told of each read

    def packet(
        self,
        first: int,
        buf: bytearray,
        start: int,
        end: int,
        out: list[bytes | bytearray],
        now: int,
    ) -> None:
        if first >> 4 == 3:
            if first & 0x06 != 0x02:
                self.bad_qos += 1
                return
            at = start + 2 + (buf[start] << 8 | buf[start + 1])
            out.append(PUBACK_HEAD)
            out.append(buf[at : at + 2])
            pair, seq, _sent = _PAYLOAD_HEAD.unpack_from(buf, at + 2)
            self.count += 1
            if pair != self.index:
                self.misrouted += 1
                return
            bits = self.received.data
            if seq >= len(bits):
                self.received.grow(seq)
                bits = self.received.data
            if bits[seq]:
                self.dup += 1
            else:
                bits[seq] = 1
                self.unique += 1
        elif first >> 4 == 9 and not self.suback.done():
            self.suback.set_result(buf[end - 1])
        else:
            super().packet(first, buf, start, end, out, now)

    def after(self, out: list[bytes | bytearray], now: int) -> None:
        pub = self.publisher
        if pub is not None and pub.sending and pub.recv_window:
            pub.kick(now)  # deliveries may have opened the publisher's receive window


class Publisher(_Conn):
    def __init__(
        self, gen: LoadGen, sub: Subscriber, topic: str, run: str, window: int, recv_window: int
    ) -> None:
        super().__init__(gen, f"dur-pub-{run}-{sub.index}", clean=True)
        self.index = sub.index
        self.sub = sub
        sub.publisher = self
        self.prefix = publish_prefix(topic)
        self.window = window  # most PUBLISHes not yet PUBACKed
        self.recv_window = recv_window  # most PUBLISHes not yet delivered to `sub`; 0 = no limit
        self.inflight: dict[int, tuple[int, int]] = {}  # packet id -> (seq, send time ns)
        self.acked = _Bits()
        self.sent = 0
        self.acks = 0
        self.sending = False
        self.measuring = False
        self.latencies: list[int] = []  # ns, PUBACKs received inside the measured window

    def _publish(self, now: int) -> bytes:
        seq = self.sent
        self.sent = seq + 1
        pid = seq % 65535 + 1
        self.inflight[pid] = (seq, now)
        return self.prefix + _PUB_TAIL.pack(pid, self.index, seq, now) + _PAD

    def refill(self, out: list[bytes | bytearray], now: int) -> None:
        """Add as many PUBLISHes to ``out`` as both windows allow."""
        if not self.sending:
            return
        room = self.window - len(self.inflight)
        if self.recv_window:
            room = min(room, self.recv_window - (self.sent - self.sub.count))
        out.extend(self._publish(now) for _ in range(room))

    def kick(self, now: int) -> None:
        out: list[bytes | bytearray] = []
        self.refill(out, now)
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def start(self) -> None:
        self.sending = True
        self.kick(time.perf_counter_ns())

    def after(self, out: list[bytes | bytearray], now: int) -> None:
        self.refill(out, now)

    def packet(
        self,
        first: int,
        buf: bytearray,
        start: int,
        end: int,
        out: list[bytes | bytearray],
        now: int,
    ) -> None:
        if first == 0x40:
            entry = self.inflight.pop(buf[start] << 8 | buf[start + 1], None)
            if entry is None:
                self.gen.error(f"{self.client_id}: PUBACK for an unknown packet id")
                return
            seq, sent = entry
            bits = self.acked.data
            if seq >= len(bits):
                self.acked.grow(seq)
                bits = self.acked.data
            bits[seq] = 1
            self.acks += 1
            if self.measuring:
                self.latencies.append(now - sent)
        else:
            super().packet(first, buf, start, end, out, now)


def _proc_ticks(pid: int) -> int | None:
    """utime + stime of a process (all its threads), in clock ticks; None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _system_busy_ticks() -> int:
    """Busy ticks of all CPUs (everything but idle and iowait), from /proc/stat."""
    line = Path("/proc/stat").read_text().splitlines()[0].split()
    vals = [int(v) for v in line[1:]]
    return sum(vals) - vals[3] - (vals[4] if len(vals) > 4 else 0)


@dataclass
class _Snapshot:
    t: float
    deliveries: int
    acks: int
    broker_ticks: int | None
    own_cpu: float
    busy_ticks: int


@dataclass
class LoadGen:
    host: str
    port: int
    pairs: int
    window: int
    recv_window: int
    warmup: float
    duration: float
    drain: float
    broker_pid: int | None
    errors: list[str] = field(default_factory=list)
    stage: str = "starting"  # what the run was doing, for the message of a timeout

    def error(self, message: str) -> None:
        if len(self.errors) < 50:
            self.errors.append(message)

    async def _open(self, conn: _Conn) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: conn, self.host, self.port)
        flags, rc = await asyncio.wait_for(conn.connack, CONNECT_TIMEOUT)
        if rc != 0:
            raise LoadError(f"{conn.client_id}: CONNACK return code {rc}")
        if isinstance(conn, Subscriber) and flags & 1:
            # a fresh broker has no session for us; an old one would skew the run
            self.error(f"{conn.client_id}: session present on a fresh broker")

    def _snapshot(self, subs: Sequence[Subscriber], pubs: Sequence[Publisher]) -> _Snapshot:
        t = os.times()
        return _Snapshot(
            t=time.perf_counter(),
            deliveries=sum(s.count for s in subs),
            acks=sum(p.acks for p in pubs),
            broker_ticks=_proc_ticks(self.broker_pid) if self.broker_pid else None,
            own_cpu=t.user + t.system,
            busy_ticks=_system_busy_ticks(),
        )

    async def run(self) -> dict[str, Any]:
        run = secrets.token_hex(4)
        topics = [f"dur/{run}/{i}" for i in range(self.pairs)]
        subs = [Subscriber(self, i, topics[i]) for i in range(self.pairs)]
        pubs = [Publisher(self, s, s.topic, run, self.window, self.recv_window) for s in subs]
        try:
            return await self._run(run, subs, pubs)
        finally:
            for conn in [*pubs, *subs]:
                conn.close()
            waits = [c.lost for c in [*pubs, *subs] if c.transport is not None]
            if waits:
                await asyncio.wait(waits, timeout=2.0)

    async def _run(self, run: str, subs: list[Subscriber], pubs: list[Publisher]) -> dict[str, Any]:
        self.stage = "connecting the subscribers"
        await asyncio.gather(*(self._open(s) for s in subs))
        self.stage = "subscribing"
        for s in subs:
            assert s.transport is not None
            s.transport.write(subscribe_packet(s.topic))
        granted = await asyncio.wait_for(asyncio.gather(*(s.suback for s in subs)), CONNECT_TIMEOUT)
        if any(g != 1 for g in granted):
            raise LoadError(f"SUBACK granted {sorted(set(granted))}, wanted QoS 1")
        self.stage = "connecting the publishers"
        await asyncio.gather(*(self._open(p) for p in pubs))

        self.stage = "publishing"
        for p in pubs:
            p.start()
        await asyncio.sleep(self.warmup)
        for p in pubs:
            p.measuring = True
        a = self._snapshot(subs, pubs)
        await asyncio.sleep(self.duration)
        b = self._snapshot(subs, pubs)
        for p in pubs:
            p.measuring = False
            p.sending = False

        self.stage = "draining"
        # drain: until everything sent is acked and received, or nothing moves for `drain` s
        drain_start = last_move = time.perf_counter()
        progress = -1
        while True:
            pending = sum(len(p.inflight) for p in pubs)
            unique = sum(s.unique for s in subs)
            if not pending and unique >= sum(p.sent for p in pubs):
                break
            now = time.perf_counter()
            moved = sum(p.acks for p in pubs) + sum(s.count for s in subs)
            if moved != progress:
                progress, last_move = moved, now
            if now - last_move > self.drain or now - drain_start > DRAIN_MAX:
                break
            await asyncio.sleep(0.02)
        drain_s = time.perf_counter() - drain_start
        self.stage = "disconnecting"

        lost = unacked_received = 0
        for p, s in zip(pubs, subs, strict=True):
            acked, got = p.acked.data, s.received.data
            for seq in range(p.sent):
                a_bit = acked[seq] if seq < len(acked) else 0
                r_bit = got[seq] if seq < len(got) else 0
                if a_bit and not r_bit:
                    lost += 1
                elif r_bit and not a_bit:
                    unacked_received += 1

        elapsed = b.t - a.t
        lat = sorted(x for p in pubs for x in p.latencies)

        def pct(q: float) -> float | None:
            if not lat:
                return None
            return lat[min(len(lat) - 1, int(q * len(lat)))] / 1000.0

        tick = os.sysconf("SC_CLK_TCK")
        broker_cpu = None
        if a.broker_ticks is not None and b.broker_ticks is not None:
            broker_cpu = 100.0 * (b.broker_ticks - a.broker_ticks) / tick / elapsed
        own_cpu = 100.0 * (b.own_cpu - a.own_cpu) / elapsed
        other_cpu = 100.0 * (b.busy_ticks - a.busy_ticks) / tick / elapsed
        other_cpu -= own_cpu + (broker_cpu or 0.0)
        return {
            "run": run,
            "pairs": self.pairs,
            "window": self.window,
            "recv_window": self.recv_window,
            "payload": PAYLOAD,
            "warmup_s": self.warmup,
            "duration_s": round(elapsed, 4),
            "deliveries": b.deliveries - a.deliveries,
            "recv_rate": (b.deliveries - a.deliveries) / elapsed,
            "ack_rate": (b.acks - a.acks) / elapsed,
            "puback_us": {
                "p50": pct(0.50),
                "p90": pct(0.90),
                "p99": pct(0.99),
                "max": lat[-1] / 1000.0 if lat else None,
                "n": len(lat),
            },
            "broker_cpu_pct": broker_cpu,
            "loadgen_cpu_pct": own_cpu,
            "other_cpu_pct": max(0.0, other_cpu),
            "sent": sum(p.sent for p in pubs),
            "acked": sum(p.acks for p in pubs),
            "received": sum(s.count for s in subs),
            "received_unique": sum(s.unique for s in subs),
            "unacked_at_end": sum(len(p.inflight) for p in pubs),
            "lost": lost,
            "dup": sum(s.dup for s in subs),
            "misrouted": sum(s.misrouted for s in subs),
            "bad_qos": sum(s.bad_qos for s in subs),
            "received_not_acked": unacked_received,
            "drain_s": round(drain_s, 3),
            "errors": list(self.errors),
        }


def loadgen_main(argv: Sequence[str]) -> int:
    """``durability.py loadgen ...``: one run against one broker; one JSON line on stdout."""
    ap = argparse.ArgumentParser(prog="durability.py loadgen")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--window", type=int, default=50)
    ap.add_argument("--recv-window", type=int, default=50)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--drain", type=float, default=2.0)
    ap.add_argument("--broker-pid", type=int)
    ap.add_argument("--cpu", type=int, help="pin this process to one CPU")
    args = ap.parse_args(argv)
    if not 1 <= args.window < 65535:
        ap.error("--window must be 1..65534 (packet ids are reused in order)")
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    gen = LoadGen(
        args.host,
        args.port,
        args.pairs,
        args.window,
        args.recv_window,
        args.warmup,
        args.duration,
        args.drain,
        args.broker_pid,
    )
    cap = CONNECT_TIMEOUT * 3 + args.warmup + args.duration + DRAIN_MAX + 5

    async def bounded() -> dict[str, Any]:
        return await asyncio.wait_for(gen.run(), cap)

    runner: Callable[[Any], Any] = asyncio.run
    loop_name = "asyncio"
    try:
        import uvloop

        runner, loop_name = uvloop.run, "uvloop"
    except ImportError:
        pass
    try:
        result: dict[str, Any] = runner(bounded())
    except (OSError, LoadError, TimeoutError) as exc:
        why = f"{type(exc).__name__} while {gen.stage}: {exc}".rstrip(": ")
        result = {"failed": why, "errors": gen.errors}
    result["loadgen_loop"] = loop_name
    print(json.dumps(result), flush=True)
    return 0 if "failed" not in result else 1


# =========================================================================== brokers


@dataclass
class Broker:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    data: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"broker exited with {proc.returncode} at start:\n{tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)  # polling a TCP port: no readiness event to await here
    raise RuntimeError(f"broker not listening on {port} after {timeout} s (log: {log})")


def _wait_idle(pid: int, limit_pct: float = 10.0, max_wait: float = 5.0) -> None:
    """Until the broker uses under ``limit_pct`` of a core over 0.3 s (start-up done)."""
    tick = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        a = _proc_ticks(pid)
        time.sleep(0.3)
        b = _proc_ticks(pid)
        if a is None or b is None or 100.0 * (b - a) / tick / 0.3 < limit_pct:
            return


def start_broker(name: str, rundir: Path, args: argparse.Namespace) -> Broker:
    port = free_port()
    data = rundir / "data"
    data.mkdir(parents=True)
    log = rundir / "broker.log"
    pin = ["taskset", "-c", str(args.broker_cpu)]
    if name == "mosquitto":
        conf = rundir / "mosquitto.conf"
        lines = [
            "# durability benchmark instance, loopback only",
            "per_listener_settings false",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {data}/",
            "autosave_interval 1800",
            "max_queued_messages 1000000",
            "max_connections -1",
            "set_tcp_nodelay true",
            "log_dest stderr",
            "log_type error",
            "connection_messages false",
            f"listener {port} 127.0.0.1",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # keep root: the data dir is private to this user
        conf.write_text("\n".join(lines) + "\n")
        cmd = [*pin, args.mosquitto, "-c", str(conf)]
    else:
        backend = "memory" if name == MEMORY else "sqlite"
        cmd = [*pin, args.python, "-m", "tidemq", "serve"]
        cmd += ["--listen", f"tcp://127.0.0.1:{port}", "--log.level", "warning"]
        cmd += ["--mqtt.sys-interval", "0", "--data-dir", str(data)]
        # as Mosquitto's below: a full queue must never drop what the run counts as lost
        cmd += ["--limits.max-queued-messages", "1000000"]
        cmd += ["--storage.backend", backend]
        if backend == "sqlite":
            cmd += ["--storage.durability", name.rsplit("-", 1)[1]]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=rundir, start_new_session=True
        )
    broker = Broker(name, proc, port, log, data)
    try:
        _wait_ready(proc, port, log, timeout=30.0)
        _wait_idle(proc.pid)
    except BaseException:
        stop_broker(broker)
        raise
    return broker


def stop_broker(broker: Broker) -> int | None:
    """SIGTERM (Mosquitto then writes its snapshot), SIGKILL after 15 s; the exit status."""
    proc = broker.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    return proc.returncode


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _log_problems(name: str, log: Path) -> list[str]:
    """Lines of the broker log worth a look: everything (logs are warning/error-only)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    found = [line for line in lines if line.strip()]
    if name == "mosquitto":
        found = [line for line in found if "should not be run as root" not in line]
    return found[:20]


def run_one(name: str, rep: int, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    rundir = workdir / f"{name}-{rep}"
    row: dict[str, Any] = {"broker": name, "rep": rep}
    broker = start_broker(name, rundir, args)
    try:
        cmd = [sys.executable, str(Path(__file__).resolve()), "loadgen"]
        cmd += ["--port", str(broker.port), "--pairs", str(args.pairs)]
        cmd += ["--window", str(args.window), "--recv-window", str(args.recv_window)]
        cmd += ["--warmup", str(args.warmup)]
        cmd += ["--duration", str(args.duration), "--drain", str(args.drain)]
        cmd += ["--broker-pid", str(broker.proc.pid), "--cpu", str(args.loadgen_cpu)]
        cap = CONNECT_TIMEOUT * 3 + args.warmup + args.duration + DRAIN_MAX + 30
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=cap)
        except subprocess.TimeoutExpired:
            row["failed"] = f"load generator still running after {cap:.0f} s; killed"
        else:
            lines = out.stdout.strip().splitlines()
            if lines:
                row.update(json.loads(lines[-1]))
            else:
                row["failed"] = f"load generator exit {out.returncode}: {out.stderr[-1500:]}"
        row["broker_alive_after"] = broker.proc.poll() is None
    finally:
        row["broker_exit"] = stop_broker(broker)
        row["data_bytes"] = _dir_bytes(broker.data)
        row["log"] = _log_problems(name, broker.log)
        if not args.keep:
            shutil.rmtree(rundir, ignore_errors=True)
    return row


# =========================================================================== summary


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _num(row: dict[str, Any], key: str) -> float | None:
    value: Any = row
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) else None


@dataclass
class Summary:
    name: str
    runs: int
    rate: float | None
    p50: float | None
    p99: float | None
    broker_cpu: float | None
    loadgen_cpu: float | None
    other_cpu: float | None
    lost: int
    dup: int
    failed: int
    log_lines: int


def summarise(rows: list[dict[str, Any]], names: Sequence[str]) -> dict[str, Summary]:
    out: dict[str, Summary] = {}
    for name in names:
        mine = [r for r in rows if r["broker"] == name]
        ok = [r for r in mine if "failed" not in r]

        def med(key: str, ok: list[dict[str, Any]] = ok) -> float | None:
            return _median([v for r in ok if (v := _num(r, key)) is not None])

        out[name] = Summary(
            name=name,
            runs=len(ok),
            rate=med("recv_rate"),
            p50=med("puback_us.p50"),
            p99=med("puback_us.p99"),
            broker_cpu=med("broker_cpu_pct"),
            loadgen_cpu=med("loadgen_cpu_pct"),
            other_cpu=med("other_cpu_pct"),
            lost=sum(int(r.get("lost", 0)) for r in ok),
            dup=sum(int(r.get("dup", 0)) + int(r.get("misrouted", 0)) for r in ok),
            failed=len(mine) - len(ok),
            log_lines=sum(len(r.get("log", [])) for r in mine),
        )
    return out


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "–"


def _fmt(v: float | None, spec: str = ",.0f") -> str:
    return "–" if v is None else format(v, spec)


def table(summary: dict[str, Summary]) -> str:
    mem = summary.get(MEMORY)
    mosq = summary.get("mosquitto")
    lines = [
        "| broker | deliveries/s | / memory | / Mosquitto | PUBACK p50 µs | PUBACK p99 µs "
        "| broker CPU % | loadgen CPU % | other CPU % | lost · dup | runs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for s in summary.values():
        runs = f"{s.runs}" + (f" ({s.failed} failed)" if s.failed else "")
        lines.append(
            f"| {s.name} | {_fmt(s.rate)} | {_ratio(s.rate, mem.rate if mem else None)} "
            f"| {_ratio(s.rate, mosq.rate if mosq else None)} | {_fmt(s.p50)} | {_fmt(s.p99)} "
            f"| {_fmt(s.broker_cpu)} | {_fmt(s.loadgen_cpu)} | {_fmt(s.other_cpu)} "
            f"| {s.lost} · {s.dup} | {runs} |"
        )
    return "\n".join(lines)


def verdict(summary: dict[str, Summary]) -> str:
    sync, mem = summary.get(SYNC), summary.get(MEMORY)
    if not (sync and mem and sync.rate and mem.rate):
        return "Target (sqlite-sync >= 0.5x memory): not measured in this run."
    ratio = sync.rate / mem.rate
    met = "met" if ratio >= TARGET else "MISSED"
    return f"Target: durable QoS 1 on SQLite (sync) >= {TARGET}x memory: {ratio:.2f}x, {met}."


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _fs_type(path: Path) -> str:
    """Filesystem type of ``path`` (tmpfs would make fsync free and the sync figure moot)."""
    best, fstype = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mount = parts[1]
            if str(path).startswith(mount) and len(mount) > len(best):
                best, fstype = mount, parts[2]
    except OSError:
        pass
    return fstype


def versions(args: argparse.Namespace) -> str:
    probe = (
        "import sqlite3, sys, tidemq, tidemq.loops as lp; print(tidemq.__version__, "
        "sys.version.split()[0], 'uvloop' if lp.uvloop_available() else 'asyncio', "
        "sqlite3.sqlite_version)"
    )
    out = subprocess.run([args.python, "-c", probe], capture_output=True, text=True)
    parts = out.stdout.split() if len(out.stdout.split()) == 4 else ["?"] * 4
    mosq = subprocess.run([args.mosquitto, "-h"], capture_output=True, text=True).stdout
    mosq_v = mosq.splitlines()[0] if mosq else "mosquitto (version unknown)"
    return f"TideMQ {parts[0]} (Python {parts[1]}, {parts[2]}, SQLite {parts[3]}); {mosq_v}"


def doc_block(summary: dict[str, Summary], rows: list[dict[str, Any]], header: str) -> str:
    lost = sum(s.lost for s in summary.values())
    dup = sum(s.dup for s in summary.values())
    failed = sum(s.failed for s in summary.values())
    logs = {s.name: s.log_lines for s in summary.values() if s.log_lines}
    notes = [
        f"- {verdict(summary)}",
        f"- Lost (acknowledged, never delivered) {lost}, duplicated or misrouted {dup}, "
        f"failed runs {failed}, over all {len(rows)} runs.",
    ]
    if logs:
        notes.append(f"- Broker log lines (warnings/errors): {logs}; see the JSON lines.")
    return f"{header}\n\n{table(summary)}\n\n" + "\n".join(notes)


def write_doc(block: str) -> None:
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    body = f"{BEGIN}\n{block}\n{END}"
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        _, after = rest.split(END, 1)
        text = before + body + after
    else:
        title = "## Durable QoS 1: persistent sessions on SQLite (bench/durability.py)"
        text = text.rstrip() + f"\n\n{title}\n\n{body}\n"
    DOC.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["loadgen"]:
        return loadgen_main(argv[1:])
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-b", "--broker", action="append", choices=BROKERS, help="default: all")
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--window", type=int, default=50, help="unacked QoS 1 per publisher")
    ap.add_argument(
        "--recv-window",
        type=int,
        default=50,
        help="sent but not yet delivered per publisher (0 = only the PUBACK window)",
    )
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    ap.add_argument("--drain", type=float, default=2.0, help="idle seconds ending the drain")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--python", default=sys.executable, help="interpreter for tidemq serve")
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    ap.add_argument("--broker-cpu", type=int, default=0)
    ap.add_argument("--loadgen-cpu", type=int, default=1)
    ap.add_argument("--workdir", help="parent of the brokers' data dirs (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep data dirs and logs")
    ap.add_argument("--out", default=str(MQB_DIR / "durability.jsonl"))
    ap.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = ap.parse_args(argv)
    names = args.broker or list(BROKERS)
    if "mosquitto" in names and not Path(args.mosquitto).exists():
        ap.error(f"{args.mosquitto} not found (apt-get install mosquitto, or -b to skip it)")
    if len(os.sched_getaffinity(0)) < 2 or args.broker_cpu == args.loadgen_cpu:
        print("warning: broker and load generator share a CPU", file=sys.stderr)

    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="tidemq-durability-", dir=args.workdir))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    rows: list[dict[str, Any]] = []
    try:
        for rep in range(args.reps):
            order = names if rep % 2 == 0 else list(reversed(names))
            for name in order:
                try:
                    row = run_one(name, rep, workdir, args)
                except RuntimeError as exc:
                    row = {"broker": name, "rep": rep, "failed": str(exc)}
                rows.append(row)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                lat = row.get("puback_us") or {}
                print(
                    f"rep {rep} {name:<20} "
                    + (
                        f"FAILED: {row['failed']}"
                        if "failed" in row
                        else f"{row['recv_rate']:>9,.0f} msg/s  PUBACK p50 "
                        f"{_fmt(lat.get('p50'))} p99 {_fmt(lat.get('p99'))} µs  broker "
                        f"{_fmt(row.get('broker_cpu_pct'))} %  loadgen "
                        f"{_fmt(row.get('loadgen_cpu_pct'))} %  lost {row['lost']} "
                        f"dup {row['dup']}  sent {row['sent']} acked {row['acked']} "
                        f"recv {row['received']}"
                    ),
                    flush=True,
                )
                for line in row.get("errors", [])[:5] + row.get("log", [])[:5]:
                    print(f"    ! {line}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir}", file=sys.stderr)

    summary = summarise(rows, names)
    header = (
        f"Run {dt.date.today().isoformat()} on {platform.node()}: {os.cpu_count()} vCPU "
        f"({_cpu_model()}), {platform.system()} {platform.release()}; data dirs on "
        f"{_fs_type(workdir)}. {versions(args)}. {args.pairs} pairs, persistent-session "
        f"(clean session off) QoS 1 subscribers, {PAYLOAD}-byte QoS 1 publishes, at most "
        f"{args.window} unacknowledged and {args.recv_window or 'unlimited'} undelivered per "
        f"publisher (closed loop); {args.warmup:g} s warm-up, "
        f"{args.duration:g} s measured; {args.reps} alternating repetitions, medians; "
        f"brokers pinned to CPU {args.broker_cpu}, the load generator (bench/durability.py, "
        f"Python) to CPU {args.loadgen_cpu}. Mosquitto: persistence true, autosave_interval "
        f"1800, max_queued_messages 1000000 (default max_inflight_messages 20); TideMQ "
        f"limits.max_queued_messages 1000000 (default limits.max_inflight 32)."
    )
    print()
    print(table(summary))
    print(verdict(summary))
    if args.write_docs:
        write_doc(doc_block(summary, rows, header))
        print(f"wrote {DOC}")
    bad = any(s.failed or s.lost or s.dup for s in summary.values())
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
