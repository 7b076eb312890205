"""Running a bench: in this process (``--workers 1``) or over N worker processes, with a
live progress line on stderr and the final report on stdout.

With several workers the parent runs no clients: it forks the workers (each runs
``Worker`` on its own event loop, uvloop when installed), reads their snapshots from one
pipe each (a worker sends one a second, one as soon as its clients are all up, and a final
one), sums them and draws the progress line. Ctrl-C reaches every process of the terminal's
process group; each worker stops its run and sends its final snapshot, and the parent
prints the report from what it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import signal
import sys
import time
from collections import Counter
from types import FrameType
from typing import Any, TextIO

from tidemq.loops import run as run_loop
from tidemq.loops import uvloop_available

from .options import BenchOptions
from .report import build_report, format_text
from .stats import Totals
from .worker import STOP_GRACE, Worker

__all__ = ["Progress", "run_bench", "run_in_process"]

# Seconds between progress lines and worker snapshots.
TICK = 1.0
# How long past --duration (plus the stop grace) the parent waits for a worker's final
# report before it asks it to stop, and then before it terminates it.
PARENT_SLACK = 5.0


class Progress:
    """The live line on stderr: rewritten in place with ``\\r`` on a terminal, one plain
    line per tick otherwise (logs, CI)."""

    def __init__(self, options: BenchOptions, stream: TextIO, *, tty: bool | None = None):
        self.options = options
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.enabled = not options.quiet
        self._started = time.monotonic()
        self._last = self._started
        self._last_counts: dict[str, int] = {}
        self._open = False  # a \r line is on screen
        self._ready_told = False

    def note(self, text: str) -> None:
        """A line of its own (always shown: tests and scripts wait for these)."""
        prefix = "\r\x1b[K" if self._open else ""
        self._open = False
        self.stream.write(f"{prefix}{text}\n")
        self.stream.flush()

    def ready(self, totals: Totals) -> None:
        if self._ready_told:
            return
        self._ready_told = True
        opts = self.options
        c = totals.counters()
        took = time.monotonic() - self._started
        if opts.command == "sub":
            what = f"{c['subscribed']}/{opts.count} clients subscribed"
        else:
            what = f"{c['connected']}/{opts.count} clients connected"
        failed = f", {c['failed']} failed" if c["failed"] else ""
        self.note(f"tidemq bench {opts.command}: {what}{failed} in {took:.2f} s")

    def tick(self, totals: Totals) -> None:
        now = time.monotonic()
        counts = totals.counters()
        recent = totals.take_recent_latency()
        if totals.ready:
            self.ready(totals)
        if not self.enabled:
            self._last, self._last_counts = now, counts
            return
        dt = max(now - self._last, 1e-6)

        def rate(name: str) -> float:
            return (counts[name] - self._last_counts.get(name, 0)) / dt

        opts = self.options
        errors = sum(totals.errors().values())
        parts = [f"{now - self._started:6.1f}s", opts.command]
        if opts.command == "conn":
            parts.append(
                f"connected {counts['connected']:,}/{opts.count:,} ({rate('connected'):,.0f}/s)"
            )
            parts.append(f"active {counts['active']:,}")
            parts.append(f"failed {counts['failed']:,}")
        else:
            parts.append(f"conns {counts['active']:,}/{opts.count:,}")
            if opts.command == "pub":
                parts.append(f"sent {counts['sent']:,} ({rate('sent'):,.0f}/s)")
                if opts.qos:
                    parts.append(f"acked {counts['acked']:,}")
            else:
                parts.append(f"recv {counts['received']:,} ({rate('received'):,.0f}/s)")
        if recent.count:
            parts.append(
                f"p50 {recent.percentile(50) / 1000:.2f}ms p99 {recent.percentile(99) / 1000:.2f}ms"
            )
        parts.append(f"errors {errors:,}")
        line = "  ".join(parts)
        if self.tty:
            self.stream.write(f"\r{line}\x1b[K")
            self._open = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._last, self._last_counts = now, counts

    def close(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


def _loop_name() -> str:
    return "uvloop" if uvloop_available() else "asyncio"


def _emit(options: BenchOptions, report: dict[str, Any], out: TextIO) -> int:
    out.write(json.dumps(report, indent=2) + "\n" if options.json else format_text(report))
    out.flush()
    return 1 if report["errors"] else 0


# --- one process -----------------------------------------------------------------------


async def run_in_process(
    options: BenchOptions,
    out: TextIO,
    err: TextIO,
    *,
    handle_signals: bool = True,
    tty: bool | None = None,
) -> tuple[int, dict[str, Any]]:
    """Run the whole bench on the running loop; returns (exit status, report)."""
    loop = asyncio.get_running_loop()
    totals = Totals(1)
    progress = Progress(options, err, tty=tty)
    worker = Worker(options)

    def ready() -> None:
        totals.add(0, worker.stats.snapshot())
        progress.ready(totals)

    worker.on_ready = ready
    signals: list[signal.Signals] = []
    if handle_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, worker.stop, "interrupted")
                signals.append(sig)

    async def ticker() -> None:
        while True:
            await asyncio.sleep(TICK)  # the progress period itself
            totals.add(0, worker.stats.snapshot())
            progress.tick(totals)

    ticking = loop.create_task(ticker())
    try:
        await worker.run()
    finally:
        ticking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticking
        for sig in signals:
            loop.remove_signal_handler(sig)
    totals.add(0, worker.stats.snapshot())
    progress.close()
    report = build_report(
        options,
        totals,
        stopped_by=worker.stopped_by or "interrupted",
        loop=_loop_name(),
    )
    return _emit(options, report, out), report


# --- worker processes --------------------------------------------------------------------


def _worker_process(
    options: BenchOptions, index: int, workers: int, conn: multiprocessing.connection.Connection
) -> None:
    """The target of a worker process: run its share, report over *conn*."""
    worker = Worker(options, index, workers)
    try:
        run_loop(_worker_main(worker, conn))
    except KeyboardInterrupt:
        # Ctrl-C before the loop's own handler was installed: report what there is.
        worker.stop("interrupted")
        with contextlib.suppress(OSError):
            conn.send(("final", worker.stats.snapshot(), worker.stopped_by))
    finally:
        conn.close()


async def _worker_main(worker: Worker, conn: multiprocessing.connection.Connection) -> None:
    loop = asyncio.get_running_loop()

    def send(kind: str) -> None:
        try:
            conn.send((kind, worker.stats.snapshot(), worker.stopped_by))
        except OSError:
            worker.stop("parent gone")

    def from_parent() -> None:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            message = "stop"
        if message == "stop":
            loop.remove_reader(conn.fileno())
            worker.stop("interrupted")

    worker.on_ready = lambda: send("snapshot")
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, worker.stop, "interrupted")
    loop.add_reader(conn.fileno(), from_parent)

    async def ticker() -> None:
        while True:
            await asyncio.sleep(TICK)  # the reporting period itself
            send("snapshot")

    ticking = loop.create_task(ticker())
    try:
        await worker.run()
    finally:
        ticking.cancel()
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(conn.fileno())
    send("final")


def _run_processes(options: BenchOptions, out: TextIO, err: TextIO) -> int:
    workers = options.workers
    methods = multiprocessing.get_all_start_methods()
    # fork: nothing has run yet in this process (no loop, no threads), and children start
    # in milliseconds instead of re-importing everything.
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    conns: dict[int, multiprocessing.connection.Connection] = {}
    processes: list[multiprocessing.process.BaseProcess] = []
    for index in range(workers):
        parent_end, child_end = ctx.Pipe()
        process = ctx.Process(  # type: ignore[attr-defined]
            target=_worker_process,
            args=(options, index, workers, child_end),
            name=f"tidemq-bench-{index}",
            daemon=True,
        )
        process.start()
        child_end.close()
        conns[index] = parent_end
        processes.append(process)
    totals = Totals(workers)
    progress = Progress(options, err)
    extra_errors: Counter[str] = Counter()
    reasons: list[str] = []
    interrupted = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        interrupted = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    started = time.monotonic()
    asked_to_stop = False
    deadline = None
    if options.duration is not None:
        deadline = started + options.duration + STOP_GRACE + PARENT_SLACK
    next_tick = started + TICK
    try:
        while conns:
            timeout = max(0.0, next_tick - time.monotonic())
            ready = multiprocessing.connection.wait(list(conns.values()), timeout)
            for end in ready:
                index = next(i for i, c in conns.items() if c is end)
                try:
                    kind, snapshot, stopped_by = conns[index].recv()
                except (EOFError, OSError):
                    extra_errors["worker_died"] += 1
                    del conns[index]
                    continue
                totals.add(index, snapshot)
                if kind == "final":
                    reasons.append(stopped_by or "interrupted")
                    del conns[index]
                elif totals.ready:
                    progress.ready(totals)
            now = time.monotonic()
            overdue = deadline is not None and now > deadline
            if (interrupted or overdue) and not asked_to_stop:
                asked_to_stop = True
                for end in conns.values():
                    with contextlib.suppress(OSError):
                        end.send("stop")
                deadline = now + STOP_GRACE + PARENT_SLACK
            elif overdue and asked_to_stop:
                for index in list(conns):
                    processes[index].terminate()
                    extra_errors["worker_killed"] += 1
                    del conns[index]
            if now >= next_tick:
                progress.tick(totals)
                next_tick = now + TICK
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for process in processes:
            process.join(PARENT_SLACK)
            if process.is_alive():
                process.kill()
    progress.close()
    # The run's reason: a Ctrl-C wins, then the most telling worker reason.
    order = ("interrupted", "duration", "all clients ended", "limit", "no clients")
    stopped_by = next((r for r in order if r in reasons), reasons[0] if reasons else "")
    if interrupted:
        stopped_by = "interrupted"
    report = build_report(
        options,
        totals,
        stopped_by=stopped_by or "workers died",
        loop=_loop_name(),
        extra_errors=dict(extra_errors),
    )
    return _emit(options, report, out)


def run_bench(options: BenchOptions, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the bench described by *options*; returns the exit status (0: no errors)."""
    out = out or sys.stdout
    err = err or sys.stderr
    if options.workers > 1:
        return _run_processes(options, out, err)
    status, _ = run_loop(run_in_process(options, out, err))
    return status
