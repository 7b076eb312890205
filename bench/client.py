"""Client publish throughput: tidemq.client beside paho-mqtt and aiomqtt, same Mosquitto.

Starts one Mosquitto on a free loopback port (pinned to CPU 0 when there are two CPUs or
more) and, for every library, QoS and repetition (libraries in rotating order), runs two
fresh processes:

* a **counting subscriber** (raw socket, MQTT 3.1.1, QoS 0 subscription): every message
  has the same size, so it counts bytes with ``recv_into`` until N messages arrived and
  reports the monotonic time of the last one; it costs almost nothing, so it is never
  the bottleneck;
* the **publisher** (pinned to CPU 1), connected before the clock starts, publishing N
  messages of 64 bytes to one topic as fast as the library allows, the idiomatic way:
  paho-mqtt from the main thread with ``loop_start()``'s network thread; aiomqtt and
  tidemq from coroutines (``await publish``), QoS 1 with ``--window`` (100) publishes
  awaiting their PUBACK at once (paho: ``max_inflight_messages_set(window)``).

QoS 0 is measured end to end: N / (last message received by the subscriber − first
publish), because a QoS 0 publish that only reached a buffer proves nothing. QoS 1 is
N / (last PUBACK − first publish); the end-to-end rate is recorded too. All speak MQTT
3.1.1 (``--mqtt 5`` for MQTT 5 where the library supports it). Medians of the
repetitions, and each library's ratio to paho-mqtt, go into ``docs/benchmarks.md``
between the ``client-bench`` markers.

    pip install -e '.[bench]'                       # paho-mqtt, aiomqtt
    python bench/client.py                          # 3 reps, writes docs/benchmarks.md
    python bench/client.py -n 2000 --reps 1 --no-write     # a smoke test
    python bench/client.py --role pub --lib tidemq --qos 1 --port 1883 --profile   # cProfile
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- client-bench:start -->", "<!-- client-bench:end -->"
TITLE = "## Client publish throughput (bench/client.py)"
LIBS = ["tidemq", "paho", "aiomqtt"]
PAYLOAD = 64
TARGET = ">= 2.0x paho-mqtt"  # issue 7
READY_TIMEOUT = 10.0


# --- the counting subscriber ---------------------------------------------------------


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _remaining_length(len(body)) + body


def _utf8(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def message_size(topic: str) -> int:
    """Bytes of one QoS 0 PUBLISH of *topic* and a 64-byte payload (MQTT 3.1.1)."""
    body = 2 + len(topic.encode()) + PAYLOAD
    return 1 + len(_remaining_length(body)) + body


def run_subscriber(port: int, topic: str, expect: int, idle: float) -> dict[str, Any]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    connect = b"\x00\x04MQTT\x04\x02\x00\x00" + _utf8(f"bench-sub-{os.getpid()}")
    sock.sendall(_packet(0x10, connect))
    if sock.recv(4) != b"\x20\x02\x00\x00":
        raise SystemExit("subscriber: connection refused")
    sock.sendall(_packet(0x82, b"\x00\x01" + _utf8(topic) + b"\x00"))
    suback = b""
    while len(suback) < 5:
        suback += sock.recv(5 - len(suback))
    if suback[-1] != 0:
        raise SystemExit("subscriber: subscription refused")
    print("ready", flush=True)
    size = message_size(topic)
    want = expect * size
    got = 0
    last = 0.0
    buf = bytearray(1 << 20)
    sock.settimeout(idle)
    try:
        while got < want:
            n = sock.recv_into(buf)
            if not n:
                break
            got += n
            last = time.monotonic()
    except TimeoutError:
        pass  # nothing for *idle* seconds: some were lost
    sock.close()
    return {"received": got // size, "t_last": last}


# --- the publishers ------------------------------------------------------------------


async def _publish_asyncio(
    publish: Callable[[int], Any], qos: int, n: int, window: int
) -> tuple[float, float]:
    t0 = time.monotonic()
    if qos == 0:
        for _ in range(n):
            await publish(0)
    else:

        async def worker(count: int) -> None:
            for _ in range(count):
                await publish(qos)

        share, extra = divmod(n, window)
        await asyncio.gather(*(worker(share + (i < extra)) for i in range(window)))
    return t0, time.monotonic()


async def pub_tidemq(port: int, topic: str, qos: int, n: int, window: int, mqtt: int) -> Any:
    from tidemq.client import Client

    payload = b"x" * PAYLOAD
    client = Client(
        f"mqtt://127.0.0.1:{port}", version=mqtt, reconnect=False, max_buffered=n + window
    )
    async with client:
        t0, t1 = await _publish_asyncio(lambda q: client.publish(topic, payload, q), qos, n, window)
    return t0, t1, _version("tidemq")


async def pub_aiomqtt(port: int, topic: str, qos: int, n: int, window: int, mqtt: int) -> Any:
    import aiomqtt

    payload = b"x" * PAYLOAD
    protocol = aiomqtt.ProtocolVersion.V5 if mqtt == 5 else aiomqtt.ProtocolVersion.V311
    async with aiomqtt.Client(
        "127.0.0.1",
        port,
        protocol=protocol,
        max_inflight_messages=window,
        timeout=60,
    ) as client:
        t0, t1 = await _publish_asyncio(lambda q: client.publish(topic, payload, q), qos, n, window)
    return t0, t1, _version("aiomqtt")


def pub_paho(port: int, topic: str, qos: int, n: int, window: int, mqtt: int) -> Any:
    import threading

    import paho.mqtt.client as paho

    payload = b"x" * PAYLOAD
    protocol = paho.MQTTv5 if mqtt == 5 else paho.MQTTv311
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=protocol)
    client.max_inflight_messages_set(window)
    client.max_queued_messages_set(0)  # no bound: publish() never refuses
    connected = threading.Event()
    done = threading.Event()
    count = 0

    def on_publish(*_: Any) -> None:
        # QoS 0: written to the socket; QoS 1: PUBACK received.
        nonlocal count
        count += 1
        if count == n:
            done.set()

    client.on_connect = lambda *_: connected.set()
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not connected.wait(READY_TIMEOUT):
        raise SystemExit("paho: no CONNACK")
    t0 = time.monotonic()
    for _ in range(n):
        client.publish(topic, payload, qos)
    done.wait()
    t1 = time.monotonic()
    client.disconnect()
    client.loop_stop()
    return t0, t1, _version("paho-mqtt")


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def run_publisher(args: argparse.Namespace) -> dict[str, Any]:
    common = (args.port, args.topic, args.qos, args.n, args.window, args.mqtt)
    if args.lib == "paho":
        t0, t1, ver = pub_paho(*common)
    else:
        fn = pub_tidemq if args.lib == "tidemq" else pub_aiomqtt
        if args.loop == "uvloop":
            import uvloop

            t0, t1, ver = uvloop.run(fn(*common))
        else:
            t0, t1, ver = asyncio.run(fn(*common))
    return {"t0": t0, "t_done": t1, "version": ver}


# --- the harness ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(cpu: int | None, cmd: list[str]) -> list[str]:
    if cpu is None or shutil.which("taskset") is None:
        return cmd
    return ["taskset", "-c", str(cpu), *cmd]


class Mosquitto:
    def __init__(self, cpu: int | None) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(binary):
            raise SystemExit("mosquitto is not installed (apt-get install mosquitto)")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="client-bench-")
        conf = Path(self.dir) / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nuser root\n"
            "log_dest stderr\nlog_type error\n"
        )
        self.version = subprocess.run(
            [binary, "-h"], capture_output=True, text=True, check=False
        ).stdout.splitlines()[0]
        self.proc = subprocess.Popen(pinned(cpu, [binary, "-c", str(conf)]))
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                # A freshly started process: polling its port is the readiness check.
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit("mosquitto did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def run_one(
    args: argparse.Namespace, port: int, lib: str, qos: int, n: int, run_id: int
) -> dict[str, Any]:
    topic = f"bench/client/{run_id:06d}"
    me = [sys.executable, str(Path(__file__).resolve())]
    sub = subprocess.Popen(
        [*me, "--role", "sub", "--port", str(port), "--topic", topic, "-n", str(n)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sub.stdout is not None
    if sub.stdout.readline().strip() != "ready":
        sub.kill()
        raise SystemExit("the subscriber did not start")
    pub_cmd = [
        *me,
        "--role",
        "pub",
        "--lib",
        lib,
        "--qos",
        str(qos),
        "-n",
        str(n),
        "--port",
        str(port),
        "--topic",
        topic,
        "--window",
        str(args.window),
        "--mqtt",
        str(args.mqtt),
        "--loop",
        args.loop,
    ]
    pub = subprocess.run(
        pinned(args.client_cpu, pub_cmd), capture_output=True, text=True, check=False
    )
    if pub.returncode != 0:
        sub.kill()
        raise SystemExit(f"{lib} publisher failed:\n{pub.stderr}")
    p = json.loads(pub.stdout.strip().splitlines()[-1])
    out, _ = sub.communicate(timeout=args.idle + 60)
    s = json.loads(out.strip().splitlines()[-1])
    e2e = s["t_last"] - p["t0"]
    row = {
        "lib": lib,
        "qos": qos,
        "n": n,
        "received": s["received"],
        "lost": n - s["received"],
        "e2e_rate": s["received"] / e2e if e2e > 0 else None,
        "ack_rate": n / (p["t_done"] - p["t0"]) if qos else None,
        "version": p["version"],
    }
    row["rate"] = row["ack_rate"] if qos else row["e2e_rate"]
    return row


def _median(values: list[Any]) -> float | None:
    vals = [v for v in values if isinstance(v, int | float)]
    return statistics.median(vals) if vals else None


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def summarise(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| library | QoS | msg/s (median) | measured until | runs | ratio to paho-mqtt "
        "| target | end to end msg/s | lost |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = {"tidemq": "tidemq.client", "paho": "paho-mqtt", "aiomqtt": "aiomqtt"}
    for qos in (0, 1):
        paho = _median([r["rate"] for r in rows if r["lib"] == "paho" and r["qos"] == qos])
        for lib in LIBS:
            mine = [r for r in rows if r["lib"] == lib and r["qos"] == qos]
            if not mine:
                continue
            rate = _median([r["rate"] for r in mine])
            ratio = rate / paho if rate and paho else None
            until = "a subscriber got the last" if qos == 0 else "the last PUBACK"
            runs = ", ".join(_fmt(r["rate"]) for r in mine)
            e2e = _median([r["e2e_rate"] for r in mine])
            lines.append(
                f"| {names[lib]} {mine[0]['version']} | {qos} | {_fmt(rate)} | {until} "
                f"| {runs} | {_fmt(ratio, 2)} | {TARGET if lib == 'tidemq' else ''} "
                f"| {_fmt(e2e)} | {sum(r['lost'] for r in mine)} |"
            )
    return "\n".join(lines)


def write_doc(table: str, header: str) -> None:
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    block = f"{START}\n{header}\n\n{table}\n{END}"
    if START in text and END in text:
        before, rest = text.split(START, 1)
        _, after = rest.split(END, 1)
        text = before + block + after
    else:
        text = text.rstrip() + f"\n\n{TITLE}\n\n{block}\n"
    DOC.write_text(text)


def harness(args: argparse.Namespace) -> int:
    cpus = os.cpu_count() or 1
    broker_cpu = 0 if cpus >= 2 and not args.no_pin else None
    args.client_cpu = 1 if cpus >= 2 and not args.no_pin else None
    broker = Mosquitto(broker_cpu)
    rows: list[dict[str, Any]] = []
    run_id = 0
    try:
        for rep in range(args.reps):
            order = LIBS[rep % len(LIBS) :] + LIBS[: rep % len(LIBS)]
            for qos in args.qos_levels:
                n = args.n if args.n else (args.n0 if qos == 0 else args.n1)
                for lib in order:
                    if lib not in args.libs:
                        continue
                    run_id += 1
                    row = run_one(args, broker.port, lib, qos, n, run_id)
                    rows.append(row)
                    print(
                        f"rep {rep + 1} {lib:8} QoS {qos}: {_fmt(row['rate'])} msg/s "
                        f"(end to end {_fmt(row['e2e_rate'])}, lost {row['lost']})",
                        file=sys.stderr,
                    )
    finally:
        broker.stop()
    table = summarise(rows)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if not args.no_write:
        loop = args.loop if args.loop == "uvloop" else "asyncio"
        sizes = f"QoS 0: {args.n or args.n0:,} messages, QoS 1: {args.n or args.n1:,}"
        header = (
            f"Run {dt.date.today()} on {platform.node()} ({cpus} vCPU, "
            f"{platform.system()} {platform.release()}), {args.reps} alternating "
            f"repetitions, medians; {PAYLOAD}-byte payloads, MQTT "
            f"{'5.0' if args.mqtt == 5 else '3.1.1'}, one topic; {sizes}; QoS 1 window "
            f"{args.window}. Python {platform.python_version()}, asyncio libraries on "
            f"{loop}; {broker.version}"
            + (", pinned to CPU 0, publishers to CPU 1" if broker_cpu is not None else "")
            + "."
        )
        write_doc(table, header)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--role", choices=("harness", "pub", "sub"), default="harness")
    ap.add_argument("--lib", choices=LIBS, default="tidemq")
    ap.add_argument("--libs", nargs="+", choices=LIBS, default=LIBS)
    ap.add_argument("--qos", type=int, choices=(0, 1), default=0, help="pub role")
    ap.add_argument("--qos-levels", type=int, nargs="+", choices=(0, 1), default=[0, 1])
    ap.add_argument("-n", type=int, default=0, help="messages per run (overrides --n0/--n1)")
    ap.add_argument("--n0", type=int, default=200_000, help="messages per QoS 0 run")
    ap.add_argument("--n1", type=int, default=50_000, help="messages per QoS 1 run")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--window", type=int, default=100, help="QoS 1 publishes in flight")
    ap.add_argument("--mqtt", type=int, choices=(4, 5), default=4, help="4 = MQTT 3.1.1")
    default_loop = "asyncio"
    try:
        import uvloop  # noqa: F401

        default_loop = "uvloop"
    except ImportError:
        pass
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default=default_loop)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--topic", default="bench/client")
    ap.add_argument("--idle", type=float, default=10.0, help="subscriber gives up after")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    ap.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    ap.add_argument("--json", help="also write every run's numbers here")
    ap.add_argument("--profile", action="store_true", help="pub role: cProfile, top 25")
    args = ap.parse_args()
    if args.role == "sub":
        print(json.dumps(run_subscriber(args.port, args.topic, args.n, args.idle)))
        return 0
    if args.role == "pub":
        if not args.n:
            args.n = args.n0 if args.qos == 0 else args.n1
        if args.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            result = profiler.runcall(run_publisher, args)
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
        else:
            result = run_publisher(args)
        print(json.dumps(result))
        return 0
    return harness(args)


if __name__ == "__main__":
    sys.exit(main())
