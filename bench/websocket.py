"""WebSocket throughput: 64-byte QoS 0 fan-in over ws:// against the same over tcp://, for
TideMQ and (when installed) Mosquitto's websockets listener, in one run.

Each publisher is its own process on a raw socket: it connects (plain MQTT, or the HTTP
upgrade then masked binary frames, one PUBLISH per frame as browser and paho clients send
them), then writes its share of ``--messages`` in pre-built batches as fast as the socket
takes them. One subscriber process on ``bench/#`` receives them all; the rate is messages
over the time from the first byte it receives to the last. Every forwarded PUBLISH has the
same size, so bytes / size is the message count (for WebSocket after removing the frame
headers); messages that never arrive are reported as lost.

    python bench/websocket.py                       # TideMQ tcp+ws, Mosquitto tcp+ws
    python bench/websocket.py --publishers 4 --messages 2000000 --no-mosquitto

The brokers run pinned to CPU 0 with ``taskset`` when available (TideMQ as ``tidemq
serve``, uvloop when installed); the load generators use the other CPUs. Rounds alternate
the brokers and schemes; the summary is the median of ``--reps`` rounds.
"""

from __future__ import annotations

import argparse
import base64
import multiprocessing as mp
import os
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOPIC = b"bench/fanin"
PAYLOAD = b"x" * 64
BATCH = 256  # PUBLISH packets per socket write


def publish_packet() -> bytes:
    body = struct.pack("!H", len(TOPIC)) + TOPIC + PAYLOAD
    return bytes([0x30, len(body)]) + body


def connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack("!H", len(cid)) + cid
    return bytes([0x10, len(body)]) + body


def subscribe_packet() -> bytes:
    topic = b"bench/#"
    body = b"\x00\x01" + struct.pack("!H", len(topic)) + topic + b"\x00"
    return bytes([0x82, len(body)]) + body


def ws_frame(payload: bytes) -> bytes:
    """A masked client binary frame (short payloads only)."""
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x82, 0x80 | len(payload)]) + key + masked


def open_link(port: int, ws: bool, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ws:
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        )
        sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("upgrade refused")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(head.split(b"\r\n")[0].decode())
    return sock


def send_mqtt(sock: socket.socket, ws: bool, data: bytes) -> None:
    sock.sendall(ws_frame(data) if ws else data)


def recv_some(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("closed")
    return data


def publisher(port: int, ws: bool, path: str, n: int, batches: int, go: float) -> None:
    sock = open_link(port, ws, path)
    send_mqtt(sock, ws, connect_packet(f"pub-{n}"))
    recv_some(sock)  # CONNACK (4 bytes, or a 6-byte frame)
    one = publish_packet()
    batch = (ws_frame(one) if ws else one) * BATCH
    time.sleep(max(0.0, go - time.monotonic()))  # all publishers start together
    for _ in range(batches):
        sock.sendall(batch)
    sock.close()


def subscriber(port: int, ws: bool, path: str, expected: int, out: mp.Queue[float]) -> None:
    sock = open_link(port, ws, path)
    send_mqtt(sock, ws, connect_packet("sub"))
    send_mqtt(sock, ws, subscribe_packet())
    size = len(publish_packet())
    out.put(0.0)  # subscribed (the SUBACK is read with the first data)
    buf = bytearray()
    received = 0  # MQTT bytes
    first = last = 0.0
    sock.settimeout(10.0)
    while received < expected * size + 9:  # + CONNACK (4) and SUBACK (5)
        try:
            data = sock.recv(262144)
        except TimeoutError:
            break  # messages were lost: the rate below counts what arrived
        if not data:
            break
        last = time.monotonic()
        if not first:
            first = last
        if ws:
            buf += data
            while len(buf) >= 2:
                n = buf[1] & 0x7F
                head = 2 + (2 if n == 126 else 8 if n == 127 else 0)
                if len(buf) < head:
                    break
                if n == 126:
                    n = struct.unpack_from("!H", buf, 2)[0]
                elif n == 127:
                    n = struct.unpack_from("!Q", buf, 2)[0]
                if len(buf) < head + n:
                    break
                received += n
                del buf[: head + n]
        else:
            received += len(data)
    messages = (received - 9) // size
    out.put(messages / (last - first) if last > first else 0.0)
    out.put(float(messages))
    sock.close()


def measure(port: int, ws: bool, path: str, publishers: int, messages: int) -> tuple[float, int]:
    """(messages per second from the first byte the subscriber gets to the last, count)."""
    ctx = mp.get_context("fork")
    out: mp.Queue[float] = ctx.Queue()
    batches = max(1, messages // publishers // BATCH)
    expected = batches * BATCH * publishers
    sub = ctx.Process(target=subscriber, args=(port, ws, path, expected, out))
    sub.start()
    out.get(timeout=10)
    time.sleep(0.2)  # the SUBSCRIBE reaches the broker before the first PUBLISH
    go = time.monotonic() + 0.3
    pubs = [
        ctx.Process(target=publisher, args=(port, ws, path, i, batches, go))
        for i in range(publishers)
    ]
    for p in pubs:
        p.start()
    rate = float(out.get(timeout=600))
    got = int(out.get(timeout=10))
    for p in [*pubs, sub]:
        p.join(timeout=10)
    return rate, expected - got


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime and stime are fields 14 and 15 of stat(5); [0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pinned(cmd: list[str]) -> list[str]:
    return ["taskset", "-c", "0", *cmd] if shutil.which("taskset") else cmd


def tidemq_build(pure: bool = False) -> str:
    """What ``tidemq --version`` says, e.g. ``tidemq 0.1.0 (pure Python, C WebSocket scanner)``."""
    env = {**os.environ, "TIDEMQ_NO_EXTENSIONS": "1"} if pure else None
    out = subprocess.run(
        [sys.executable, "-m", "tidemq", "--version"], capture_output=True, env=env, check=True
    )
    return out.stdout.decode().strip()


def start_tidemq(tmp: Path, pure: bool = False) -> tuple[subprocess.Popen[bytes], int, int]:
    """``tidemq serve``; *pure*: with TIDEMQ_NO_EXTENSIONS=1 (no C WebSocket scanner)."""
    data = tmp / ("data-py" if pure else "data")
    cmd = [
        sys.executable, "-m", "tidemq", "serve", "--listen", "tcp://127.0.0.1:0",
        "--listen", "ws://127.0.0.1:0/mqtt", "--data-dir", str(data),
        "--mqtt.sys-interval", "0", "--log.level", "info",
    ]  # fmt: skip
    env = {**os.environ, "TIDEMQ_NO_EXTENSIONS": "1"} if pure else None
    proc = subprocess.Popen(pinned(cmd), stderr=subprocess.PIPE, cwd=ROOT, env=env)
    assert proc.stderr is not None
    ports: dict[str, int] = {}
    while len(ports) < 2:
        line = proc.stderr.readline().decode()
        if not line:
            raise RuntimeError("tidemq serve exited")
        found = re.search(r"listening on (tcp|ws)://127\.0\.0\.1:(\d+)", line)
        if found:
            ports[found.group(1)] = int(found.group(2))
    return proc, ports["tcp"], ports["ws"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mosquitto(tmp: Path) -> tuple[subprocess.Popen[bytes], int, int] | None:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        return None
    tcp, ws = free_port(), free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(
        f"listener {tcp} 127.0.0.1\nlistener {ws} 127.0.0.1\nprotocol websockets\n"
        "allow_anonymous true\nmax_queued_messages 1000\n"
    )
    proc = subprocess.Popen(pinned([binary, "-c", str(conf)]), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", ws), timeout=0.2).close()
            return proc, tcp, ws
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--messages", type=int, default=1_000_000, help="per measurement")
    parser.add_argument("--reps", type=int, default=3, help="alternating rounds; medians")
    parser.add_argument("--no-mosquitto", action="store_true")
    parser.add_argument(
        "--pure-too",
        action="store_true",
        help="also a TideMQ without its C WebSocket scanner (TIDEMQ_NO_EXTENSIONS=1), as tidemq-py",
    )
    args = parser.parse_args()
    print(tidemq_build(), flush=True)
    runs: dict[str, list[float]] = {}
    # Broker CPU time per message (µs): what each message costs the broker whether or not the
    # load generators, which share one CPU, keep it saturated.
    costs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        brokers: list[tuple[str, tuple[subprocess.Popen[bytes], int, int]]] = []
        try:
            brokers.append(("tidemq", start_tidemq(tmp)))
            if args.pure_too:
                print(f"tidemq-py: {tidemq_build(pure=True)}", flush=True)
                brokers.append(("tidemq-py", start_tidemq(tmp, pure=True)))
            if not args.no_mosquitto:
                mosq = start_mosquitto(tmp)
                if mosq is not None:
                    brokers.append(("mosquitto", mosq))
            for rnd in range(args.reps):
                for name, (proc, tcp, ws) in brokers:
                    for scheme, port in (("tcp", tcp), ("ws", ws)):
                        before = cpu_seconds(proc.pid)
                        rate, lost = measure(
                            port, scheme == "ws", "/mqtt", args.publishers, args.messages
                        )
                        cost = (cpu_seconds(proc.pid) - before) / args.messages * 1e6
                        runs.setdefault(f"{name} {scheme}", []).append(rate)
                        costs.setdefault(f"{name} {scheme}", []).append(cost)
                        note = f" ({lost} lost)" if lost else ""
                        print(
                            f"round {rnd + 1}: {name:10} {scheme:4} {rate:12,.0f} msg/s"
                            f"  {cost:5.2f} µs CPU/msg{note}",
                            flush=True,
                        )
        finally:
            for _, (proc, _, _) in brokers:
                proc.terminate()
                proc.wait(timeout=10)
    results = {key: statistics.median(values) for key, values in runs.items()}
    print(f"medians of {args.reps} rounds, {args.publishers} publishers, {args.messages} messages:")
    for key, value in results.items():
        cost = statistics.median(costs[key])
        print(f"  {key:15} {value:12,.0f} msg/s  {cost:5.2f} µs broker CPU/msg")
    if "tidemq tcp" in results and "tidemq ws" in results:
        print(f"TideMQ ws/tcp: {results['tidemq ws'] / results['tidemq tcp']:.2f} (target >= 0.7)")
    if "mosquitto ws" in results:
        print(f"TideMQ ws / Mosquitto ws: {results['tidemq ws'] / results['mosquitto ws']:.2f}")
        if "tidemq-py ws" in results:
            ratio = results["tidemq-py ws"] / results["mosquitto ws"]
            print(f"TideMQ without C scanner, ws / Mosquitto ws: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
