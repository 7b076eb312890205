"""Command line: ``tidemq serve``, ``tidemq pub`` / ``tidemq sub`` (mosquitto_pub/sub alike)
and ``tidemq bench`` (emqtt-bench alike, in tidemq.benchtool).

The only module allowed to print; it also owns logging output (the library never installs
handlers).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from tidemq import __version__
from tidemq.config import Config, ConfigError, add_arguments, load_config, overrides_from_args
from tidemq.protocol import COMPILED
from tidemq.transport.websocket import C_SCANNER

# Which build runs: the protocol package compiled by mypyc or not, and whether the optional
# C WebSocket frame scanner was built (README, "Speed-ups").
BUILD = ("mypyc build" if COMPILED else "pure Python") + (
    ", C WebSocket scanner" if C_SCANNER else ""
)

log = logging.getLogger("tidemq")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidemq", description="TideMQ: MQTT 3.1/3.1.1/5.0 broker and messaging gateway"
    )
    parser.add_argument("--version", action="version", version=f"tidemq {__version__} ({BUILD})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="run the broker",
        description="Run the broker. With no arguments: TCP on 0.0.0.0:1883, data in ./data.",
    )
    add_arguments(serve)
    _add_client_commands(sub)
    _add_passwd_command(sub)
    from tidemq.benchtool import add_bench_commands

    bench = sub.add_parser(
        "bench",
        help="load-test any MQTT broker (like emqtt-bench)",
        description="Load-test an MQTT broker: pub, sub or conn (see docs/bench.md).",
    )
    add_bench_commands(bench)
    from tidemq.ctl import add_ctl_commands

    ctl = sub.add_parser(
        "ctl",
        help="manage built-in users, ACL rules and bans in the configured storage",
        description="Manage built-in users, ACL rules and bans in the storage [storage] "
        "names, also while the broker runs: it sees user changes within "
        "auth.builtin.cache_ttl, ACL rule changes within acl.builtin.cache_ttl plus "
        "acl.cache_ttl, and bans within bans.refresh_interval seconds.",
    )
    add_ctl_commands(ctl)
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


def tune_gc(threshold: int) -> None:
    """``node.gc_threshold``: fewer young-generation collections on the hot path, and the
    long-lived objects of start-up moved out of the collector's way (``gc.freeze``)."""
    if not threshold:
        return
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(threshold, second, third)


async def serve(config: Config) -> int:
    from tidemq.app import Broker, open_storage_from_config
    from tidemq.storage.api import StorageError

    prepare_data_dir(config.node.data_dir)
    try:
        storage = await open_storage_from_config(config)
    except StorageError as exc:
        log.error("cannot open storage (%s): %s", config.storage.backend, exc)
        return 1
    broker = Broker(config, storage=storage)
    try:
        await broker.start()
    except (OSError, StorageError, ValueError) as exc:  # ValueError: a bad auth/ACL file
        log.error("cannot start: %s", exc)
        if storage is not None:
            await storage.close()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def reload() -> None:
        # New connections get the new certificates; established ones keep theirs.
        log.info("SIGHUP: reloading TLS certificates, password and ACL files")
        broker.reload_tls()
        broker.reload_auth()

    loop.add_signal_handler(signal.SIGHUP, reload)
    tune_gc(config.node.gc_threshold)
    log.info("tidemq %s (%s) running as %s", __version__, BUILD, config.node.name)
    await stop.wait()
    log.info("shutting down")
    await broker.stop()
    if storage is not None:
        await storage.close()
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
    if args.command == "passwd":
        return _passwd_main(args)
    if args.command == "ctl":
        from tidemq.ctl import ctl_main

        return ctl_main(args)
    if args.command == "bench":
        from tidemq.benchtool import main as bench_main

        return bench_main(args)
    parser.error(f"unknown command {args.command}")
    return 2


# --- tidemq pub / tidemq sub: mosquitto_pub / mosquitto_sub look-alikes ---------------

# mosquitto_sub exits with MOSQ_ERR_TIMEOUT (27) when -W runs out.
EXIT_TIMEOUT = 27


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--help", action="help", help="show this help and exit")
    parser.add_argument("-h", "--host", default="localhost", help="broker host (localhost)")
    parser.add_argument("-p", "--port", type=int, help="broker port (1883, 8883 with TLS)")
    parser.add_argument(
        "-L",
        "--url",
        help="mqtt(s)://[user[:password]@]host[:port]/topic, or ws(s)://host[:port]/path "
        "for MQTT over WebSocket (path /mqtt if none; the topic then comes from -t)",
    )
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
    websocket, ws_path = False, ""
    if args.url:
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(args.url)
        if parts.scheme not in ("mqtt", "mqtts", "ws", "wss"):
            raise ValueError("-L needs an mqtt://, mqtts://, ws:// or wss:// URL")
        websocket = parts.scheme in ("ws", "wss")
        tls = tls or parts.scheme in ("mqtts", "wss")
        host, port = parts.hostname or host, parts.port or port
        username = unquote(parts.username) if parts.username else username
        password = unquote(parts.password) if parts.password else password
        if websocket:
            ws_path = parts.path or "/mqtt"
        else:
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
        port = (443 if tls else 80) if websocket else 8883 if tls else 1883
    clean = not getattr(args, "disable_clean_session", False)
    if not clean and not args.client_id:
        raise ValueError("-c needs a client id (-i)")
    scheme = ("wss" if tls else "ws") if websocket else "mqtts" if tls else "mqtt"
    return Client(
        f"{scheme}://{host}:{port}{ws_path}",
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


# --- tidemq passwd: mosquitto_passwd alike --------------------------------------------


def _add_passwd_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from tidemq.auth.passwords import ALGORITHMS, DEFAULT_ALGORITHM

    passwd = sub.add_parser(
        "passwd",
        help="manage a password file (like mosquitto_passwd)",
        description="Add, update or delete users of a password file (auth.password_file). "
        "The password is asked for twice unless -b gives it. The file is rewritten "
        "atomically with mode 0600.",
        epilog="examples: tidemq passwd -c passwd alice | tidemq passwd -b passwd bob "
        "PASSWORD | tidemq passwd -D passwd bob | tidemq passwd -U passwd",
    )
    mode = passwd.add_mutually_exclusive_group()
    mode.add_argument(
        "-c", dest="create", action="store_true", help="create the file (overwriting it)"
    )
    mode.add_argument("-D", dest="delete", action="store_true", help="delete the user")
    mode.add_argument(
        "-U",
        dest="upgrade",
        action="store_true",
        help="hash every plain-text password in the file (no username)",
    )
    passwd.add_argument(
        "-b", dest="batch", action="store_true", help="take the password from the command line"
    )
    passwd.add_argument(
        "-H",
        "--hash",
        choices=ALGORITHMS,
        default=DEFAULT_ALGORITHM,
        help=f"hash for new passwords (default {DEFAULT_ALGORITHM})",
    )
    passwd.add_argument("file", help="the password file")
    passwd.add_argument("username", nargs="?")
    passwd.add_argument("password", nargs="?", help="with -b")


def _read_new_password() -> str:
    import getpass

    first = getpass.getpass("Password: ")
    second = getpass.getpass("Reenter password: ")
    if first != second:
        raise ValueError("passwords do not match")
    return first


def _passwd_main(args: argparse.Namespace) -> int:
    from tidemq.auth.password_file import (
        PasswordEntries,
        PasswordFileError,
        check_username,
        parse_password_file,
        write_password_file,
    )
    from tidemq.auth.passwords import hash_password, identify

    try:
        if args.upgrade:
            if args.username is not None or args.batch:
                raise ValueError("-U takes only the file")
        elif args.username is None:
            raise ValueError("a username is needed")
        elif args.batch != (args.password is not None) and not args.delete:
            raise ValueError("-b needs the password after the username, and only -b takes one")
        elif args.delete and (args.batch or args.password is not None):
            raise ValueError("-D takes the file and the username only")
        if args.create:
            entries = PasswordEntries({}, ())
        else:
            try:
                with open(args.file, encoding="utf-8") as file:
                    entries = parse_password_file(file.read(), args.file)
            except FileNotFoundError:
                raise ValueError(f"{args.file} does not exist (use -c to create it)") from None
        users = dict(entries.users)
        username: str = args.username or ""
        if args.upgrade:
            plain = [u for u, h in users.items() if identify(h) is None]
            for username in plain:
                users[username] = hash_password(users[username], args.hash)
            print(f"{len(plain)} password(s) hashed", file=sys.stderr)
        elif args.delete:
            if users.pop(username, None) is None:
                raise ValueError(f"user {username} is not in {args.file}")
        else:
            check_username(username)
            password = args.password if args.batch else _read_new_password()
            if not password:
                raise ValueError("empty password")
            users[username] = hash_password(password, args.hash)
        write_password_file(args.file, PasswordEntries(users, entries.lines))
    except (ValueError, PasswordFileError, OSError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, EOFError):
        print(file=sys.stderr)
        return 130
    return 0
