"""Command line: ``tidemq serve | pub | sub | passwd | ctl | bench``."""

from __future__ import annotations

import argparse
import sys

from tidemq import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tidemq", description="TideMQ MQTT broker")
    parser.add_argument("--version", action="version", version=f"tidemq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the broker")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        print("tidemq serve: the broker is not implemented yet", file=sys.stderr)
        return 2
    return 0
