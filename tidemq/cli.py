"""Command line: ``tidemq serve`` (more subcommands arrive with their issues).

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
    parser.error(f"unknown command {args.command}")
    return 2
