"""``tidemq bench`` options: the argparse definitions (emqtt-bench's letters where they do
not clash) and ``BenchOptions``, the validated, picklable form every worker process gets.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = [
    "STAMP_SIZE",
    "BenchOptions",
    "OptionsError",
    "TopicTemplate",
    "add_bench_commands",
    "options_from_args",
]

COMMANDS = ("pub", "sub", "conn")
# A payload starts with this magic and the send time (ns since the epoch, big-endian), so
# `bench sub` can tell our messages apart and measure end-to-end latency.
MAGIC = b"TQB1"
STAMP_SIZE = len(MAGIC) + 8
# emqtt-bench's defaults: 10 ms between connection starts, one message a second per
# publisher, 256-byte payloads, MQTT 5, keepalive 300 s, one QoS 1/2 message in flight.
DEFAULT_CONNECT_INTERVAL_MS = 10.0
DEFAULT_MSG_INTERVAL_MS = 1000.0
DEFAULT_SIZE = 256
DEFAULT_KEEPALIVE = 300
DEFAULT_INFLIGHT = 1
DEFAULT_CONNECT_TIMEOUT = 30.0
VERSIONS = {"3": 3, "31": 3, "4": 4, "311": 4, "5": 5, "50": 5}
SCHEMES = {
    "mqtt": "mqtt",
    "tcp": "mqtt",
    "mqtts": "mqtts",
    "ssl": "mqtts",
    "tls": "mqtts",
    "ws": "ws",
    "wss": "wss",
}
_RAND = re.compile(r"%rand_(\d+)")


class OptionsError(ValueError):
    """Invalid command line options (exit status 2)."""


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """Everything a worker needs; picklable (no SSL context: each process builds one)."""

    command: str
    url: str
    count: int = 1
    start_number: int = 1
    connect_interval: float = DEFAULT_CONNECT_INTERVAL_MS / 1000  # s between starts
    msg_interval: float = DEFAULT_MSG_INTERVAL_MS / 1000  # s between one client's messages
    qos: int = 0
    size: int = DEFAULT_SIZE
    topics: tuple[str, ...] = ()
    retain: bool = False
    limit: int = 0  # messages per client (0: no limit)
    duration: float | None = None  # seconds from the start of the run
    version: int = 5
    username: str | None = None
    password: str | None = None
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    insecure: bool = False
    prefix: str = field(default_factory=lambda: f"bench-{os.urandom(3).hex()}")
    keepalive: int = DEFAULT_KEEPALIVE
    clean: bool = True
    inflight: int = DEFAULT_INFLIGHT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    workers: int = 1
    json: bool = False
    quiet: bool = False

    @property
    def tls(self) -> bool:
        return self.url.startswith(("mqtts://", "wss://"))

    def client_id(self, number: int) -> str:
        return f"{self.prefix}_{self.command}_{number}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for this run, built in the calling process."""
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.cafile)
        if self.certfile:
            context.load_cert_chain(self.certfile, self.keyfile)
        if self.insecure:
            # --insecure: no host name check and no chain check, as mosquitto_pub and
            # emqtt-bench do; only for test brokers with throw-away certificates.
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


class TopicTemplate:
    """A topic with emqtt-bench's variables: ``%i`` client number, ``%c`` client id,
    ``%u`` username, ``%rand_N`` a random number 1..N, and (publishers only) ``%s`` the
    message's sequence number (1, 2, …) of that client.

    ``fixed(...)`` expands the per-client variables once. A template with ``%s`` or (when
    publishing) ``%rand_N`` left is per-message: ``per_message`` is True and ``expand`` is
    called for each message, so a plain topic costs nothing per message.
    """

    __slots__ = ("_parts", "per_message", "text")

    def __init__(self, text: str, *, number: int, client_id: str, username: str | None) -> None:
        fixed = text.replace("%i", str(number)).replace("%c", client_id)
        fixed = fixed.replace("%u", username or "")
        self.text = fixed
        self.per_message = "%s" in fixed or bool(_RAND.search(fixed))
        # Split once into literal pieces and variables so expand() does no regex work.
        parts: list[str | int] = []
        pos = 0
        for match in re.finditer(r"%s|%rand_(\d+)", fixed):
            parts.append(fixed[pos : match.start()])
            parts.append(0 if match.group(0) == "%s" else int(match.group(1)))
            pos = match.end()
        parts.append(fixed[pos:])
        self._parts = tuple(parts)

    def fixed_once(self) -> str:
        """The topic with random numbers drawn once (for subscribers) and ``%s`` as 1."""
        return self.expand(1)

    def expand(self, seq: int) -> str:
        if not self.per_message:
            return self.text
        out = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
            elif part == 0:
                out.append(str(seq))
            else:
                out.append(str(random.randint(1, part)))
        return "".join(out)


# --- argparse ---------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    value = float(text)
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, not {text!r}")
    return value


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--help", action="help", help="show this help and exit")
    conn = parser.add_argument_group("broker")
    conn.add_argument("-h", "--host", default="localhost", help="broker host (localhost)")
    conn.add_argument("-p", "--port", type=int, help="broker port (1883; 8883 with TLS)")
    conn.add_argument(
        "--url",
        help="broker URL instead of -h/-p: mqtt://, mqtts://, ws://host:port/mqtt, wss://…",
    )
    conn.add_argument("--ws", action="store_true", help="WebSocket (ws://host:port/mqtt)")
    conn.add_argument(
        "-V", "--protocol-version", default="5", help="3 (3.1), 4 (3.1.1) or 5 (default 5)"
    )
    conn.add_argument("-u", "--username")
    conn.add_argument("-P", "--password")
    conn.add_argument(
        "-k", "--keepalive", type=int, default=DEFAULT_KEEPALIVE, help="seconds (300)"
    )
    conn.add_argument(
        "-C",
        "--clean",
        choices=("true", "false"),
        default="true",
        help="clean start / clean session (true)",
    )
    conn.add_argument(
        "--connect-timeout",
        type=_positive_float,
        default=DEFAULT_CONNECT_TIMEOUT,
        help="seconds for TCP + TLS + CONNACK (30)",
    )
    tls = parser.add_argument_group("TLS")
    tls.add_argument("-S", "--ssl", action="store_true", help="use TLS (mqtts://, wss://)")
    tls.add_argument("--cafile", help="CA certificates to verify the broker (implies -S)")
    tls.add_argument("--cert", "--certfile", dest="certfile", help="client certificate (-S)")
    tls.add_argument("--key", "--keyfile", dest="keyfile", help="client private key")
    tls.add_argument(
        "--insecure", action="store_true", help="do not verify the broker's certificate"
    )
    clients = parser.add_argument_group("clients")
    clients.add_argument("-c", "--count", type=int, default=1, help="connections (1)")
    clients.add_argument(
        "-n", "--start-number", type=int, default=1, help="number of the first client (1)"
    )
    pace = clients.add_mutually_exclusive_group()
    pace.add_argument(
        "-i",
        "--interval",
        type=_positive_float,
        help=f"ms between connection starts ({DEFAULT_CONNECT_INTERVAL_MS:g})",
    )
    pace.add_argument(
        "--connect-rate", type=_positive_float, help="connection starts per second instead of -i"
    )
    clients.add_argument(
        "--prefix", help="client id prefix; ids are PREFIX_COMMAND_N (default bench-<random>)"
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--duration", type=_positive_float, help="stop after this many seconds (no limit)"
    )
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes to spread the clients over, each with its own event loop (1)",
    )
    run.add_argument("--json", action="store_true", help="print the final report as JSON")
    run.add_argument("--quiet", action="store_true", help="no live progress line")
    run.add_argument("-d", "--debug", action="store_true", help="log client events to stderr")


def _add_messaging(parser: argparse.ArgumentParser, *, publisher: bool) -> None:
    group = parser.add_argument_group("messages")
    group.add_argument("-q", "--qos", type=int, choices=(0, 1, 2), default=0)
    if publisher:
        group.add_argument(
            "-t", "--topic", required=True, help="topic template: %%i %%c %%u %%s %%rand_N"
        )
        group.add_argument(
            "-s",
            "--size",
            type=int,
            default=DEFAULT_SIZE,
            help=f"payload bytes ({DEFAULT_SIZE}; >= {STAMP_SIZE} to carry a timestamp)",
        )
        rate = group.add_mutually_exclusive_group()
        rate.add_argument(
            "-I",
            "--interval-of-msg",
            type=_positive_float,
            help=f"ms between one client's messages ({DEFAULT_MSG_INTERVAL_MS:g}; 0: flat out)",
        )
        rate.add_argument(
            "-r", "--rate", type=_positive_float, help="messages per second, all clients together"
        )
        group.add_argument(
            "-F",
            "--inflight",
            type=int,
            default=DEFAULT_INFLIGHT,
            help="QoS 1/2 messages each client keeps unacknowledged (1)",
        )
        group.add_argument("--retain", action="store_true", help="publish retained messages")
        group.add_argument(
            "-L", "--limit", type=int, default=0, help="messages per client, then stop (0: none)"
        )
    else:
        group.add_argument(
            "-t",
            "--topic",
            action="append",
            required=True,
            help="topic filter template (repeatable): %%i %%c %%u %%rand_N",
        )
        group.add_argument(
            "-L",
            "--limit",
            type=int,
            default=0,
            help="stop once every client received this many messages (0: no limit)",
        )


def add_bench_commands(parser: argparse.ArgumentParser) -> None:
    """Add ``pub``, ``sub`` and ``conn`` under *parser* (the ``tidemq bench`` parser)."""
    sub = parser.add_subparsers(dest="bench_command", required=True, metavar="pub|sub|conn")
    pub = sub.add_parser(
        "pub",
        add_help=False,
        help="publishers sending timestamped messages at a rate",
        description="Connect -c publishers and publish to -t at -I ms per client (or -r in "
        "total); report the publish rate and, for QoS 1/2, the acknowledgement latency.",
    )
    _add_common(pub)
    _add_messaging(pub, publisher=True)
    subscriber = sub.add_parser(
        "sub",
        add_help=False,
        help="subscribers counting messages and end-to-end latency",
        description="Connect -c subscribers to -t; count what arrives and measure end-to-end "
        "latency from the send time `tidemq bench pub` puts in each payload.",
    )
    _add_common(subscriber)
    _add_messaging(subscriber, publisher=False)
    conn = sub.add_parser(
        "conn",
        add_help=False,
        help="open connections at a rate and hold them",
        description="Open -c connections at -i ms apart (or --connect-rate) and hold them; "
        "report the connect rate, failures and CONNACK latency.",
    )
    _add_common(conn)


def _broker_url(args: argparse.Namespace, tls: bool) -> str:
    if args.url:
        url = str(args.url)
        if "://" not in url:
            url = "mqtt://" + url
        parts = urlsplit(url)
        scheme = SCHEMES.get(parts.scheme.lower())
        if scheme is None:
            raise OptionsError(f"--url: unsupported scheme {parts.scheme!r}")
        if tls and scheme in ("mqtt", "ws"):
            scheme += "s"
        return scheme + url[len(parts.scheme) :]
    scheme = ("wss" if tls else "ws") if args.ws else ("mqtts" if tls else "mqtt")
    if args.port:
        port = args.port
    elif args.ws:
        port = 8084 if tls else 8083  # EMQX's WebSocket ports
    else:
        port = 8883 if tls else 1883
    host = str(args.host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    return f"{scheme}://{host}:{port}" + ("/mqtt" if args.ws else "")


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """Validate the parsed command line into ``BenchOptions``.

    Raises:
        OptionsError: contradictory or out-of-range options.
    """
    command = args.bench_command
    version = VERSIONS.get(str(args.protocol_version).lower().removeprefix("mqttv"))
    if version is None:
        raise OptionsError(f"-V: unknown protocol version {args.protocol_version!r}")
    if args.count < 1:
        raise OptionsError("-c: need at least one connection")
    if args.workers < 1:
        raise OptionsError("--workers: need at least one")
    if args.keepalive < 0 or args.keepalive > 0xFFFF:
        raise OptionsError("-k: keepalive must be 0..65535 seconds")
    tls = bool(args.ssl or args.cafile or args.certfile or args.insecure)
    if args.keyfile and not args.certfile:
        raise OptionsError("--key needs --cert")
    if args.url and (args.port or args.ws or args.host != "localhost"):
        raise OptionsError("--url replaces -h, -p and --ws")
    url = _broker_url(args, tls)
    if args.connect_rate is not None:
        if args.connect_rate <= 0:
            raise OptionsError("--connect-rate must be > 0")
        connect_interval = 1.0 / args.connect_rate
    elif args.interval is not None:
        connect_interval = args.interval / 1000
    else:
        connect_interval = DEFAULT_CONNECT_INTERVAL_MS / 1000
    values: dict[str, object] = {
        "command": command,
        "url": url,
        "count": args.count,
        "start_number": args.start_number,
        "connect_interval": connect_interval,
        "duration": args.duration,
        "version": version,
        "username": args.username,
        "password": args.password,
        "cafile": args.cafile,
        "certfile": args.certfile,
        "keyfile": args.keyfile,
        "insecure": args.insecure,
        "keepalive": args.keepalive,
        "clean": args.clean == "true",
        "connect_timeout": args.connect_timeout,
        "workers": min(args.workers, args.count),
        "json": args.json,
        "quiet": args.quiet,
    }
    if args.prefix:
        values["prefix"] = args.prefix
    if command in ("pub", "sub"):
        values["qos"] = args.qos
        if args.limit < 0:
            raise OptionsError("-L: must be >= 0")
        values["limit"] = args.limit
    if command == "pub":
        if args.size < 0:
            raise OptionsError("-s: must be >= 0")
        if not 1 <= args.inflight <= 0xFFFF:
            raise OptionsError("-F: inflight must be 1..65535")
        if args.rate is not None:
            if args.rate <= 0:
                raise OptionsError("-r: rate must be > 0")
            msg_interval = args.count / args.rate
        elif args.interval_of_msg is not None:
            msg_interval = args.interval_of_msg / 1000
        else:
            msg_interval = DEFAULT_MSG_INTERVAL_MS / 1000
        values.update(
            topics=(args.topic,),
            size=args.size,
            msg_interval=msg_interval,
            inflight=args.inflight,
            retain=args.retain,
        )
    elif command == "sub":
        values["topics"] = tuple(args.topic)
    return BenchOptions(**values)  # type: ignore[arg-type]
