"""``tidemq bench pub|sub|conn``: the emqtt-bench of TideMQ, built on ``tidemq.client``.

It measures any MQTT broker: N connections opened at a rate, publishers sending
timestamped payloads, subscribers counting what arrives and the end-to-end latency, spread
over several processes when one event loop is not enough. See docs/bench.md.

Modules: ``options`` (command line, ``BenchOptions``), ``worker`` (one process's clients on
one loop), ``runner`` (in-process or multi-process runs, progress line), ``stats`` and
``histogram`` (counters and bounded-memory latency percentiles), ``report``.

This package root stays light (the CLI imports it to build its parser); the client is
imported only when a bench runs.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .options import BenchOptions, OptionsError, add_bench_commands, options_from_args

__all__ = ["BenchOptions", "OptionsError", "add_bench_commands", "main", "options_from_args"]


def main(args: argparse.Namespace) -> int:
    """Run ``tidemq bench`` from parsed arguments; returns the exit status.

    0: the run had no errors; 1: some connection, subscription or publish failed; 2: bad
    options.
    """
    try:
        options = options_from_args(args)
    except OptionsError as exc:
        sys.stderr.write(f"tidemq bench: {exc}\n")
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.debug:
        # Failures are counted in the report; a warning per lost connection would bury
        # the progress line when a broker drops thousands of them.
        logging.getLogger("tidemq.client").setLevel(logging.CRITICAL)
    from .runner import run_bench

    return run_bench(options)
