"""Command line: ``tidemq serve``, and ``tidemq pub`` / ``tidemq sub`` (mosquitto_pub/sub alike).

The only module allowed to print; it also owns logging output (the library never installs
handlers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from tidemq import __version__
from tidemq.config import Config, ConfigError, add_arguments, load_config, overrides_from_args

log = logging.getLogger("tidemq")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidemq", description="TideMQ: MQTT 3.1/3.1.1/5.0 broker and messaging gateway"
    )
    parser.add_argument("--version", action="version", version=f"tidemq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="run the broker",
        description="Run the broker. With no arguments: TCP on 0.0.0.0:1883, data in ./data.",
    )
    add_arguments(serve)
    _add_client_commands(sub)
    return parser


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "time": self.formatTime(record),
                "level": record.levelname.lower(),
                "logger": record.name,
                "msg": record.getMessage(),
            }
        )


def setup_logging(config: Config) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.log.format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log.level.upper())


def prepare_data_dir(path: str) -> Path:
    """Create the data directory with private permissions (0700)."""
    data_dir = Path(path)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    return data_dir


async def serve(config: Config) -> int:
    from tidemq.app import Broker

    prepare_data_dir(config.node.data_dir)
    broker = Broker(config)
    try:
        await broker.start()
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def reload() -> None:
        # New connections get the new certificates; established ones keep theirs.
        log.info("SIGHUP: reloading TLS certificates")
        broker.reload_tls()

    loop.add_signal_handler(signal.SIGHUP, reload)
    log.info("tidemq %s running as %s", __version__, config.node.name)
    await stop.wait()
    log.info("shutting down")
    await broker.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        try:
            config = load_config(args.config, overrides=overrides_from_args(args))
        except ConfigError as exc:
            print(f"tidemq: {exc}", file=sys.stderr)
            return 2
        setup_logging(config)
        from tidemq.loops import run

        return run(serve(config))
    if args.command in ("pub", "sub"):
        return _client_main(args)
    parser.error(f"unknown command {args.command}")
    return 2


# --- tidemq pub / tidemq sub: mosquitto_pub / mosquitto_sub look-alikes ---------------

# mosquitto_sub exits with MOSQ_ERR_TIMEOUT (27) when -W runs out.
EXIT_TIMEOUT = 27


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--help", action="help", help="show this help and exit")
    parser.add_argument("-h", "--host", default="localhost", help="broker host (localhost)")
    parser.add_argument("-p", "--port", type=int, help="broker port (1883, 8883 with TLS)")
    parser.add_argument("-L", "--url", help="mqtt(s)://[user[:password]@]host[:port]/topic")
    parser.add_argument("-q", "--qos", type=int, choices=(0, 1, 2), default=0)
    parser.add_argument(
        "-V",
        "--protocol-version",
        default="311",
        help="5, 311 or 31 (also mqttv5, mqttv311, mqttv31); default 311 as mosquitto",
    )
    parser.add_argument("-u", "--username")
    parser.add_argument("-P", "--pw", dest="password")
    parser.add_argument("-i", "--id", dest="client_id", help="client id (default random)")
    parser.add_argument("-k", "--keepalive", type=int, default=60, help="seconds (60)")
    parser.add_argument("--cafile", help="CA certificates to verify the broker (enables TLS)")
    parser.add_argument("--cert", help="client certificate (enables TLS)")
    parser.add_argument("--key", help="client private key")
    parser.add_argument("--insecure", action="store_true", help="don't check the host name")
    parser.add_argument("-d", "--debug", action="store_true", help="log protocol events")


def _add_client_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pub = sub.add_parser("pub", add_help=False, help="publish a message (like mosquitto_pub)")
    _add_client_options(pub)
    pub.add_argument("-t", "--topic")
    body = pub.add_mutually_exclusive_group()
    body.add_argument("-m", "--message", help="the payload")
    body.add_argument("-f", "--file", help="send the file's contents as the payload")
    body.add_argument("-l", "--stdin-line", action="store_true", help="one message per line")
    body.add_argument("-s", "--stdin-file", action="store_true", help="all of stdin as one")
    body.add_argument("-n", "--null-message", action="store_true", help="a zero-length payload")
    pub.add_argument("-r", "--retain", action="store_true")
    pub.add_argument("--repeat", type=int, default=1, help="publish the message N times")
    subscriber = sub.add_parser("sub", add_help=False, help="print messages (like mosquitto_sub)")
    _add_client_options(subscriber)
    subscriber.add_argument("-t", "--topic", action="append", default=[])
    subscriber.add_argument("-v", "--verbose", action="store_true", help="print the topic too")
    subscriber.add_argument("-C", dest="count", type=int, help="exit after N messages")
    subscriber.add_argument("-W", dest="timeout", type=float, help="exit after N seconds")
    subscriber.add_argument("-N", dest="no_newline", action="store_true")
    subscriber.add_argument("-R", dest="no_retained", action="store_true", help="skip retained")
    subscriber.add_argument(
        "-c", "--disable-clean-session", action="store_true", help="keep the session"
    )


def _client_for(args: argparse.Namespace, *, reconnect: bool) -> Any:
    import ssl

    from tidemq.client import Client

    versions = {"5": 5, "mqttv5": 5, "311": 4, "mqttv311": 4, "31": 3, "mqttv31": 3}
    version = versions.get(str(args.protocol_version).lower())
    if version is None:
        raise ValueError(f"unknown protocol version {args.protocol_version!r}")
    username, password = args.username, args.password
    host, port, tls = args.host, args.port, bool(args.cafile or args.cert)
    if args.url:
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(args.url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError("-L needs an mqtt:// or mqtts:// URL")
        tls = tls or parts.scheme == "mqtts"
        host, port = parts.hostname or host, parts.port or port
        username = unquote(parts.username) if parts.username else username
        password = unquote(parts.password) if parts.password else password
        topic = unquote(parts.path.lstrip("/"))
        if topic:
            args.topic = [topic] if isinstance(args.topic, list) else topic
    context = None
    if tls:
        context = ssl.create_default_context(cafile=args.cafile)
        if args.cert:
            context.load_cert_chain(args.cert, args.key)
        if args.insecure:
            context.check_hostname = False
    if port is None:
        port = 8883 if tls else 1883
    clean = not getattr(args, "disable_clean_session", False)
    if not clean and not args.client_id:
        raise ValueError("-c needs a client id (-i)")
    return Client(
        f"{'mqtts' if tls else 'mqtt'}://{host}:{port}",
        client_id=args.client_id,
        version=version,
        username=username,
        password=password,
        keepalive=args.keepalive,
        clean_start=clean,
        session_expiry=3600 if not clean and version == 5 else None,
        ssl=context,
        reconnect=reconnect,
    )


async def _pub(args: argparse.Namespace) -> int:
    client = _client_for(args, reconnect=False)  # -L may name the topic
    if not args.topic:
        raise ValueError("a topic is needed (-t)")
    loop = asyncio.get_running_loop()
    async with client:
        if args.stdin_line:
            while line := await loop.run_in_executor(None, sys.stdin.buffer.readline):
                line = line.rstrip(b"\r\n")
                if line:  # mosquitto_pub skips blank lines
                    await client.publish(args.topic, line, args.qos, args.retain)
            return 0
        if args.stdin_file:
            payload = await loop.run_in_executor(None, sys.stdin.buffer.read)
        elif args.file:
            payload = await loop.run_in_executor(None, Path(args.file).read_bytes)
        elif args.null_message:
            payload = b""
        elif args.message is not None:
            payload = args.message.encode("utf-8")
        else:
            raise ValueError("nothing to publish: use -m, -f, -l, -s or -n")
        for _ in range(args.repeat):
            result = await client.publish(args.topic, payload, args.qos, args.retain)
            if args.debug:
                print(f"Client sent PUBLISH (q{args.qos}, m{result.packet_id})", file=sys.stderr)
    return 0


async def _sub(args: argparse.Namespace) -> int:
    client = _client_for(args, reconnect=True)  # -L may name the topic
    if not args.topic:
        raise ValueError("at least one topic is needed (-t)")
    out = sys.stdout.buffer
    end = b"" if args.no_newline else b"\n"
    async with client:
        stream = client.messages()
        codes = await client.subscribe(args.topic, args.qos)
        if args.debug:
            print(f"Client received SUBACK: granted {codes}", file=sys.stderr, flush=True)
        count = 0
        deadline = (
            None if args.timeout is None else asyncio.get_running_loop().time() + (args.timeout)
        )
        while args.count is None or count < args.count:
            left = None if deadline is None else deadline - asyncio.get_running_loop().time()
            try:
                msg = await stream.get(left if left is None else max(left, 0.0))
            except TimeoutError:
                print("Timed out", file=sys.stderr)
                return EXIT_TIMEOUT
            except StopAsyncIteration:
                return 1
            if args.no_retained and msg.retain:
                continue
            payload = msg.payload
            if args.verbose:  # mosquitto_sub -v prints "(null)" for an empty payload
                payload = msg.topic.encode("utf-8") + b" " + (payload or b"(null)")
            line = payload
            out.write(line + end)
            out.flush()
            count += 1
    return 0


def _client_main(args: argparse.Namespace) -> int:
    from tidemq.client import ClientError

    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return asyncio.run(_pub(args) if args.command == "pub" else _sub(args))
    except (ClientError, ValueError, OSError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
