"""Codec micro-benchmark: TideMQ's ``tidemq.protocol`` codec beside amqtt and mqtt-codec.

Usage::

    python bench/codec.py [--quick] [--json OUT] [--markdown] [--rounds N]
                          [--peer-python PATH | --no-peers] [--only CASE ...]

Operations, on MQTT 3.1.1 packets (the bytes come from ``_peers.sample_packets()``, so every
codec is fed the same bytes): PUBLISH "sensors/42/temp" with 64 B and 1 KiB payloads at QoS 0
and 1, CONNECT ("bench-client", keepalive 60, clean session, username + password) and
SUBSCRIBE ("sensors/+/temp", QoS 1):

* ``decode``: one buffer holding ``--copies`` copies of the packet back to back, decoded the
  way a connection does it: ``PacketReader.feed(buffer)`` then ``read_batch()`` until it
  returns no packet (``MQTTConnection.receive_data``'s loop).  One op = one packet.
* ``encode``: build the packet object from its field values (``Publish(...)`` etc., with the
  constructor's validation) and serialise it with ``encode(packet, 4)``; this is the mode of
  the peers' default ``build=True``.
* ``serialise``: ``encode(packet, 4)`` of one prebuilt packet (the peers' ``build=False``).
* ``re-encode`` (QoS 1 PUBLISH only): the bytes of one shared PUBLISH for another receiver,
  i.e. with that receiver's packet id: ``splice_packet_id(head, tail, pid)`` on the parts
  from ``encode_publish_parts``.  The peers have no such API; their figure is their cheapest
  way to get the same bytes (see ``_peers.amqtt_reencode`` / ``mqtt_codec_reencode``).  The
  packet ids are ``PACKET_IDS`` values drawn with a fixed seed, the same for every codec.

Our codec is measured in this process.  The peers are measured afterwards (never at the same
time) by ``_peers.py`` in a subprocess run by ``--peer-python`` (default:
``/tmp/bench-venv/bin/python`` if it exists, else this interpreter), because they need a venv
of their own (mqtt-codec only builds with ``setuptools<58``); a peer that does not import
there is reported as "not installed".  Timing is identical on both sides (the helpers of
``_peers``): ``time.perf_counter`` around the loop only, an iteration count calibrated so one
repeat takes about ``--seconds``, best of ``_peers.REPEATS`` (3) repeats.  ``--rounds N``
repeats the whole run (ours, then the peers) N times and keeps each cell's best, so that on a
shared machine both sides get the same chances of a quiet moment; the 1-minute load average
before and after is recorded, with a warning when the machine was busy.  Before any timing
every codec's output is checked: decoded fields against a stdlib parse of the bytes (first
and last packet of the buffer, packet count, nothing left over), encoded bytes byte for byte.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import _peers  # bench/ is on sys.path: this file is run as a script

try:
    import tidemq.protocol as mqtt
except ModuleNotFoundError:  # run by a python without tidemq installed: use the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import tidemq.protocol as mqtt

SEED = 20261124
PACKET_IDS = 1000  # packet ids per re-encode pass
COPIES = 10_000  # packets in the decode buffer
QUICK_COPIES = 2_000
SECONDS = _peers.TARGET_SECONDS  # per timed repeat
QUICK_SECONDS = 0.1
DEFAULT_PEER_PYTHON = Path("/tmp/bench-venv/bin/python")
PROTOCOL_LEVEL = 4  # MQTT 3.1.1: the only version both peers speak
BUSY_LOAD = 1.3  # 1-minute load average above ~1 (this process) + 0.3: not an idle machine

CASE_LABELS: dict[str, str] = {
    "publish_64_q0": "PUBLISH 64 B QoS 0",
    "publish_64_q1": "PUBLISH 64 B QoS 1",
    "publish_1k_q0": "PUBLISH 1 KiB QoS 0",
    "publish_1k_q1": "PUBLISH 1 KiB QoS 1",
    "connect": "CONNECT",
    "subscribe": "SUBSCRIBE",
}
OP_LABELS: dict[str, str] = {
    "decode": "decode (PacketReader, buffer)",
    "encode": "encode (build + serialise)",
    "serialise": "serialise only",
    "reencode": "re-encode for a new receiver (packet id)",
}
# table columns for the peers: (column, peer, peer operation, options)
PEER_COLUMNS: tuple[str, ...] = ("amqtt", "amqtt-stream", "mqtt-codec")
PEER_OF_COLUMN: dict[str, str] = {
    "amqtt": "amqtt",
    "amqtt-stream": "amqtt",
    "mqtt-codec": "mqtt-codec",
}


class CheckError(AssertionError):
    """TideMQ's codec did not decode or encode a benchmark packet correctly."""


@dataclass(slots=True)
class Row:
    case: str
    op: str
    size: int
    ours: float
    peers: dict[str, float | str | None] = field(default_factory=dict)

    def ratio(self, column: str) -> float | None:
        peer = self.peers.get(column)
        return self.ours / peer if isinstance(peer, float) and peer > 0 else None


@dataclass(frozen=True, slots=True)
class PeerJob:
    """One peer measurement: ``column`` of row (``case``, ``op``)."""

    case: str
    op: str
    column: str

    @property
    def key(self) -> str:
        return f"{self.case}/{self.op}/{self.column}"


# --------------------------------------------------------------------------- our codec


def packet_ids() -> list[int]:
    rng = random.Random(SEED)
    return [rng.randint(1, 0xFFFF) for _ in range(PACKET_IDS)]


def _check(ok: bool, what: str, got: object, want: object) -> None:
    if not ok:
        raise CheckError(f"tidemq: {what}: got {got!r}, expected {want!r}")


def _check_fields(pkt: object, want: _peers.PacketFields) -> None:
    got: tuple[object, ...]
    exp: tuple[object, ...]
    if want.packet_type == 3:
        _check(type(pkt) is mqtt.Publish, "type", type(pkt), mqtt.Publish)
        assert isinstance(pkt, mqtt.Publish)
        got = (pkt.topic, pkt.payload, pkt.qos, pkt.packet_id, pkt.retain, pkt.dup)
        exp = (want.topic, want.payload, want.qos, want.packet_id or 0, False, False)
    elif want.packet_type == 1:
        _check(type(pkt) is mqtt.Connect, "type", type(pkt), mqtt.Connect)
        assert isinstance(pkt, mqtt.Connect)
        password = pkt.password.decode() if pkt.password is not None else None
        got = (
            pkt.protocol_version,
            pkt.client_id,
            pkt.keepalive,
            pkt.clean_start,
            pkt.username,
            password,
            pkt.will,
        )
        exp = (
            4,
            want.client_id,
            want.keep_alive,
            want.clean_session,
            want.username,
            want.password,
            None,
        )
    else:
        _check(type(pkt) is mqtt.Subscribe, "type", type(pkt), mqtt.Subscribe)
        assert isinstance(pkt, mqtt.Subscribe)
        got = (pkt.packet_id, tuple((s.topic_filter, s.qos) for s in pkt.subscriptions))
        exp = (want.packet_id, want.filters)
    _check(got == exp, "decoded fields", got, exp)


def ours_decode(raw: bytes, copies: int) -> float:
    """Decode ops/s: ``feed`` a buffer of ``copies`` copies, ``read_batch`` until empty."""
    want = _peers.parse_packet(raw)
    buf = raw * copies
    reader_cls = mqtt.PacketReader

    def decode_all(reader: mqtt.PacketReader) -> tuple[int, object]:
        reader.feed(buf)
        read_batch = reader.read_batch
        done = 0
        last: object = None
        while True:
            batch = read_batch()
            if not batch:
                return done, last
            last = batch[-1]
            done += len(batch)

    # correctness first: the one-shot decoder, the first packet, then a whole pass
    _check_fields(mqtt.decode(raw, PROTOCOL_LEVEL), want)
    reader = reader_cls(PROTOCOL_LEVEL)
    reader.feed(raw * 2)
    _check_fields(reader.next_packet(), want)
    reader = reader_cls(PROTOCOL_LEVEL)
    t0 = time.perf_counter()
    done, last = decode_all(reader)
    one_pass = time.perf_counter() - t0
    _check(done == copies, "packets decoded", done, copies)
    _check_fields(last, want)
    _check(reader.buffered == 0, "bytes left after the buffer", reader.buffered, 0)

    def run(n: int) -> tuple[float, int]:
        total, count = 0.0, 0
        for _ in range(n):
            rd = reader_cls(PROTOCOL_LEVEL)
            t0 = time.perf_counter()
            k, _last = decode_all(rd)
            total += time.perf_counter() - t0
            count += k
        return total, count

    return _peers._best_rate(run, _peers._units_for(one_pass), copies)


def _builder(want: _peers.PacketFields) -> Callable[[], mqtt.Packet]:
    """A function that builds a fresh packet object for ``want`` through the public API."""
    if want.packet_type == 3:
        topic, payload, qos, pid = want.topic, want.payload, want.qos, want.packet_id or 0
        publish = mqtt.Publish
        return lambda: publish(topic=topic, payload=payload, qos=qos, packet_id=pid)
    if want.packet_type == 1:
        w = want
        password = w.password.encode() if w.password is not None else None
        return lambda: mqtt.Connect(
            client_id=w.client_id,
            clean_start=w.clean_session,
            keepalive=w.keep_alive,
            username=w.username,
            password=password,
        )
    filters, sub_pid = want.filters, want.packet_id or 0
    subscribe, subscription = mqtt.Subscribe, mqtt.Subscription
    return lambda: subscribe(
        packet_id=sub_pid,
        subscriptions=tuple(subscription(topic_filter=f, qos=q) for f, q in filters),
    )


def ours_encode(raw: bytes, *, build: bool) -> float:
    """Encode ops/s: build + ``encode`` (``build=True``) or ``encode`` of a prebuilt packet."""
    make = _builder(_peers.parse_packet(raw))
    encode = mqtt.encode
    out = encode(make(), PROTOCOL_LEVEL)
    _check(out == raw, "encoded bytes", out, raw)
    prebuilt = make()
    out = encode(prebuilt, PROTOCOL_LEVEL)
    _check(out == raw, "re-encoded bytes", out, raw)

    def run(n: int) -> tuple[float, int]:
        done = 0
        if build:
            t0 = time.perf_counter()
            for _ in range(n):
                encode(make(), 4)
                done += 1
        else:
            t0 = time.perf_counter()
            for _ in range(n):
                encode(prebuilt, 4)
                done += 1
        return time.perf_counter() - t0, done

    return _peers._best_rate(run, _peers._calibrate(run), 1)


def ours_reencode(raw: bytes, pids: Sequence[int]) -> float:
    """Re-encode ops/s: ``splice_packet_id(head, tail, pid)`` over ``pids``."""
    want = _peers.parse_packet(raw)
    head, tail = mqtt.encode_publish_parts(
        want.topic.encode(), want.payload, want.qos, False, False, b""
    )
    splice = mqtt.splice_packet_id
    _check(splice(head, tail, want.packet_id or 0) == raw, "spliced bytes", head + tail, raw)
    for pid in pids:
        got, exp = splice(head, tail, pid), _peers.with_packet_id(raw, pid)
        _check(got == exp, f"spliced bytes for packet id {pid}", got, exp)
    ids = list(pids)

    def run(n: int) -> tuple[float, int]:
        done = 0
        t0 = time.perf_counter()
        for _ in range(n):
            for pid in ids:
                splice(head, tail, pid)
            done += len(ids)
        return time.perf_counter() - t0, done

    return _peers._best_rate(run, _peers._calibrate(run), len(ids))


def operations(raw: bytes) -> list[str]:
    ops = ["decode", "encode", "serialise"]
    if _peers.parse_packet(raw).qos:
        ops.append("reencode")
    return ops


def measure_ours(
    cases: dict[str, bytes], copies: int, pids: Sequence[int], log: Callable[[str], None]
) -> list[Row]:
    rows: list[Row] = []
    for case, raw in cases.items():
        for op in operations(raw):
            if op == "decode":
                rate = ours_decode(raw, copies)
            elif op == "encode":
                rate = ours_encode(raw, build=True)
            elif op == "serialise":
                rate = ours_encode(raw, build=False)
            else:
                rate = ours_reencode(raw, pids)
            log(f"  tidemq {case} {op}: {rate:,.0f} ops/s")
            rows.append(Row(case, op, len(raw), rate))
    return rows


# --------------------------------------------------------------------------- peers


def peer_jobs(rows: Sequence[Row]) -> list[PeerJob]:
    jobs: list[PeerJob] = []
    for row in rows:
        for column in PEER_COLUMNS:
            if column == "amqtt-stream" and row.op != "decode":
                continue
            jobs.append(PeerJob(row.case, row.op, column))
    return jobs


def _run_peer_job(job: PeerJob, raw: bytes, copies: int, pids: Sequence[int]) -> float:
    peer = PEER_OF_COLUMN[job.column]
    ops = _peers.PEER_OPS[peer]
    if job.op == "decode":
        reader = "stream" if job.column == "amqtt-stream" else None
        kwargs: dict[str, Any] = {"copies": copies, "verbose": True}
        if reader:
            kwargs["reader"] = reader
        return ops["decode"](raw, **kwargs)
    if job.op in ("encode", "serialise"):
        return ops["encode"](raw, build=job.op == "encode", verbose=True)
    return ops["reencode"](raw, pids, verbose=True)


def peer_worker() -> int:
    """``--peer-worker``: read jobs (JSON) on stdin, write results (JSON) on stdout."""
    request = json.load(sys.stdin)
    _peers.TARGET_SECONDS = float(request["seconds"])
    copies = int(request["copies"])
    pids = [int(p) for p in request["packet_ids"]]
    found = _peers.available()
    results: dict[str, float | str] = {}
    with contextlib.redirect_stdout(sys.stderr):  # _peers' progress lines
        for item in request["jobs"]:
            job = PeerJob(item["case"], item["op"], item["column"])
            peer = PEER_OF_COLUMN[job.column]
            if peer not in found:
                results[job.key] = "not installed"
                continue
            raw = bytes.fromhex(item["raw"])
            try:
                results[job.key] = _run_peer_job(job, raw, copies, pids)
            except _peers.PeerCheckError as exc:
                results[job.key] = f"check failed: {exc}"
    json.dump(
        {"python": sys.version.split()[0], "executable": sys.executable, "available": found},
        sys.stdout,
    )
    sys.stdout.write("\n")
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")
    return 0


def measure_peers(
    rows: Sequence[Row],
    cases: dict[str, bytes],
    peer_python: Path,
    *,
    copies: int,
    seconds: float,
    pids: Sequence[int],
) -> dict[str, Any]:
    """Fill ``row.peers`` from a ``--peer-worker`` subprocess; return facts about the peers."""
    jobs = peer_jobs(rows)
    request = {
        "seconds": seconds,
        "copies": copies,
        "packet_ids": list(pids),
        "jobs": [
            {"case": j.case, "op": j.op, "column": j.column, "raw": cases[j.case].hex()}
            for j in jobs
        ],
    }
    info: dict[str, Any] = {"peer_python": str(peer_python), "available": {}}
    failure: str | None = None
    try:
        proc = subprocess.run(
            [str(peer_python), str(Path(__file__).resolve()), "--peer-worker"],
            input=json.dumps(request),
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
    except OSError as exc:
        failure = f"cannot run {peer_python}: {exc}"
    else:
        lines = proc.stdout.strip().splitlines()
        if proc.returncode or len(lines) < 2:
            failure = f"peer worker failed (exit {proc.returncode})"
        else:
            meta, results = json.loads(lines[-2]), json.loads(lines[-1])
            info.update(meta)
            by_cell = {(j.case, j.op, j.column): results.get(j.key) for j in jobs}
            for row in rows:
                for column in PEER_COLUMNS:
                    if (row.case, row.op, column) in by_cell:
                        row.peers[column] = by_cell[(row.case, row.op, column)]
    if failure is not None:
        info["error"] = failure
        for row in rows:
            for column in PEER_COLUMNS:
                row.peers[column] = "not installed"
    return info


def default_peer_python() -> Path:
    return DEFAULT_PEER_PYTHON if DEFAULT_PEER_PYTHON.exists() else Path(sys.executable)


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    value: float | None
    goal: float
    unit: str  # "ops/s" or "x"

    @property
    def met(self) -> bool | None:
        return None if self.value is None else self.value >= self.goal

    def describe(self) -> str:
        goal = f"{self.goal:,.0f} ops/s" if self.unit == "ops/s" else f"{self.goal:g}×"
        if self.value is None:
            return f"{self.name} ≥ {goal}: not measured"
        value = f"{self.value:,.0f} ops/s" if self.unit == "ops/s" else f"{self.value:.2f}×"
        if self.met:
            return f"{self.name} ≥ {goal}: MET ({value})"
        short = (1 - self.value / self.goal) * 100
        need = self.goal / self.value
        return (
            f"{self.name} ≥ {goal}: NOT MET ({value}: {short:.0f}% short, needs {need:.2f}× faster)"
        )


def targets(rows: Sequence[Row]) -> list[Target]:
    def find(case: str, op: str) -> Row | None:
        return next((r for r in rows if r.case == case and r.op == op), None)

    dec = find("publish_64_q0", "decode")
    out = [
        Target("decode 64 B QoS 0 PUBLISH", dec.ours if dec else None, 400_000, "ops/s"),
        Target("… vs amqtt (BufferReader)", dec.ratio("amqtt") if dec else None, 10, "x"),
        Target("… vs amqtt (StreamReader)", dec.ratio("amqtt-stream") if dec else None, 10, "x"),
        Target("… vs mqtt-codec", dec.ratio("mqtt-codec") if dec else None, 2, "x"),
    ]
    for case in ("publish_64_q1", "publish_1k_q1"):
        row = find(case, "reencode")
        label = f"re-encode shared {CASE_LABELS[case]}"
        out.append(Target(label, row.ours if row else None, 1_000_000, "ops/s"))
    return out


# --------------------------------------------------------------------------- output


def _cell(value: float | str | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return "check failed" if value.startswith("check failed") else value
    return f"{value:,.0f}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}×"


def table(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    header = [
        "packet",
        "operation",
        "tidemq",
        "amqtt",
        "amqtt (stream)",
        "mqtt-codec",
        "÷ amqtt",
        "÷ amqtt (stream)",
        "÷ mqtt-codec",
    ]
    body = [
        [
            CASE_LABELS.get(r.case, r.case),
            OP_LABELS[r.op],
            _cell(r.ours),
            _cell(r.peers.get("amqtt")),
            _cell(r.peers.get("amqtt-stream")),
            _cell(r.peers.get("mqtt-codec")),
            _ratio(r.ratio("amqtt")),
            _ratio(r.ratio("amqtt-stream")),
            _ratio(r.ratio("mqtt-codec")),
        ]
        for r in rows
    ]
    return header, body


def render_text(rows: Sequence[Row]) -> str:
    header, body = table(rows)
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = []
    for n, line in enumerate([header, *body]):
        cells = [c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(line)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(rows: Sequence[Row]) -> str:
    header, body = table(rows)
    align = ["---", "---"] + ["---:"] * (len(header) - 2)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(line) + " |" for line in body]
    return "\n".join(lines)


def merge_best(best: Sequence[Row], new: Sequence[Row]) -> list[Row]:
    """Cell by cell, the higher of two runs' figures (rows in the same order)."""
    out: list[Row] = []
    for a, b in zip(best, new, strict=True):
        row = Row(a.case, a.op, a.size, max(a.ours, b.ours), dict(a.peers))
        for column, value in b.peers.items():
            old = row.peers.get(column)
            if isinstance(value, float) and (not isinstance(old, float) or value > old):
                row.peers[column] = value
        out.append(row)
    return out


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "checkout"


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    parser.add_argument("--json", metavar="OUT", type=Path, help="write the results as JSON")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    peers = parser.add_mutually_exclusive_group()
    peers.add_argument(
        "--peer-python",
        type=Path,
        help=f"interpreter with amqtt and mqtt-codec (default: {DEFAULT_PEER_PYTHON} if it "
        "exists, else this one)",
    )
    peers.add_argument("--no-peers", action="store_true", help="measure TideMQ only")
    parser.add_argument("--copies", type=int, help="packets per decode buffer")
    parser.add_argument("--seconds", type=float, help="target duration of one timed repeat")
    parser.add_argument(
        "--only", nargs="+", choices=list(CASE_LABELS), metavar="CASE", help="cases to run"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the whole run (tidemq, then peers) N times and keep each cell's best: "
        "spreads both sides over the same stretch of time on a shared machine",
    )
    parser.add_argument("--peer-worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _build() -> str:
    """Which build of tidemq.protocol is measured (README, "Speed-ups")."""
    return "mypyc build" if mqtt.COMPILED else "pure Python"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.peer_worker:
        return peer_worker()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    copies = args.copies or (QUICK_COPIES if args.quick else COPIES)
    seconds = args.seconds or (QUICK_SECONDS if args.quick else SECONDS)
    _peers.TARGET_SECONDS = seconds
    cases = _peers.sample_packets()
    if args.only:
        cases = {k: v for k, v in cases.items() if k in args.only}
    pids = packet_ids()
    started = dt.datetime.now(dt.UTC)

    log(f"tidemq {_version('tidemq')} ({_build()}, in process, {sys.executable})")
    load_before = _loadavg()
    rows: list[Row] = []
    peer_info: dict[str, Any] = {}
    for n in range(args.rounds):
        if args.rounds > 1:
            log(f"round {n + 1} of {args.rounds}")
        ours = measure_ours(cases, copies, pids, log)
        if args.no_peers:
            peer_info = {"skipped": True}
            for row in ours:
                row.peers = dict.fromkeys(PEER_COLUMNS, "not measured")
        else:
            peer_python = args.peer_python or default_peer_python()
            log(f"peers (subprocess, {peer_python})")
            peer_info = measure_peers(
                ours, cases, peer_python, copies=copies, seconds=seconds, pids=pids
            )
            if "error" in peer_info:
                log(f"  {peer_info['error']}")
        rows = merge_best(rows, ours) if rows else ours
    for row in rows:  # decode-only column
        if row.op != "decode":
            row.peers["amqtt-stream"] = None
    load_after = _loadavg()

    meta = {
        "started": started.isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "tidemq": _version("tidemq"),
        "tidemq_build": _build(),
        "peers": peer_info,
        "protocol_level": PROTOCOL_LEVEL,
        "copies": copies,
        "seconds_per_repeat": seconds,
        "repeats": _peers.REPEATS,
        "seed": SEED,
        "packet_ids": len(pids),
        "quick": args.quick,
        "rounds": args.rounds,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }
    found = peer_info.get("available", {})
    versions = ", ".join(f"{p} {found.get(p, 'not installed')}" for p in _peers.PEERS)
    print(
        f"TideMQ codec benchmark  {meta['started']}  Python {meta['python']}  "
        f"{meta['platform']}  {meta['cpus']} CPUs"
    )
    print(f"tidemq {meta['tidemq']} ({meta['tidemq_build']}); peers: {versions}")
    print(
        f"ops/s, best of {_peers.REPEATS}; decode buffer of {copies:,} packets; ÷ = tidemq / peer"
    )
    if args.rounds > 1:
        print(f"each figure: the best of {args.rounds} rounds (tidemq, then the peers, per round)")
    busy = [x for x in (load_before, load_after) if x is not None and x > BUSY_LOAD]
    if busy:
        print(
            f"WARNING: 1-minute load average {max(busy):.2f} during the run: other processes "
            "were competing for the CPUs, figures are unreliable"
        )
    print()
    print(render_markdown(rows) if args.markdown else render_text(rows))
    print()
    goals = targets(rows)
    for goal in goals:
        print(("- " if args.markdown else "") + goal.describe())

    if args.json:
        doc = {
            "meta": meta,
            "rows": [asdict(r) for r in rows],
            "targets": [{**asdict(t), "met": t.met} for t in goals],
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
