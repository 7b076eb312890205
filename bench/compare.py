"""Broker comparison: TideMQ beside Mosquitto and amqtt, same scenarios, same run.

Starts ``tidemq serve`` pinned to CPU 0 (``bench/restart.sh``), the peers with
``../shared/bench/brokers.sh`` (also pinned to CPU 0), runs ``../shared/bench/compare.py``
(mqload pinned to CPU 1, alternating brokers, 3 repetitions by default) and writes the
medians, ratios to Mosquitto, CPU use and loss/duplicate/misroute counts into
``docs/benchmarks.md`` between the ``broker-compare`` markers.

    ../shared/bench/setup.sh                 # once: builds mqload, installs the peers
    python bench/compare.py                  # the issue's scenarios, 3 reps (≈ 20 min)
    python bench/compare.py -s fanin-q0 --reps 1 --no-write
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SHARED_BENCH", ROOT.parent / "shared" / "bench"))
MQB_DIR = Path(os.environ.get("MQB_DIR", "/tmp/mqbench"))
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- broker-compare:start -->", "<!-- broker-compare:end -->"
SCENARIOS = ["fanin-q0", "fanout-q0", "pairs-q0", "pairs-q1", "lat-5k", "lat-20k", "conn-10k"]
# Issue 9 targets: ratio of TideMQ's primary metric to Mosquitto's (latency: see notes).
TARGETS = {
    "fanin-q0": ">= 0.80",
    "fanout-q0": ">= 1.00",
    "pairs-q0": ">= 0.80",
    "pairs-q1": ">= 0.60",
    "lat-5k": "p50 <= 1.5x, p99 <= 1 ms",
    "lat-20k": "not saturated, p99 <= 2 ms",
    "conn-10k": "rate >= 0.50, <= 3 KiB/conn",
}


def sh(*cmd: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def start_brokers(python: str) -> list[str]:
    env = dict(os.environ, PYTHON=python, MQB_DIR=str(MQB_DIR))
    subprocess.run([str(SHARED / "brokers.sh"), "start"], check=True, env=env)
    specs = [sh(str(ROOT / "bench" / "restart.sh"), "tidemq", env=env)]
    for name in ("mosquitto", "amqtt"):
        pid = (MQB_DIR / f"{name}.pid").read_text().strip()
        port = {"mosquitto": 18841, "amqtt": 18842}[name]
        specs.append(f"{name}=127.0.0.1:{port}@{pid}")
    return specs


def stop_brokers(python: str) -> None:
    env = dict(os.environ, PYTHON=python, MQB_DIR=str(MQB_DIR))
    subprocess.run([str(ROOT / "bench" / "restart.sh"), "stop-tidemq"], check=False, env=env)
    subprocess.run([str(SHARED / "brokers.sh"), "stop"], check=False, env=env)


def median(values: list[float]) -> float | None:
    vals = [v for v in values if isinstance(v, int | float)]
    return statistics.median(vals) if vals else None


def summarise(rows: list[dict[str, object]]) -> str:
    by: dict[tuple[str, str], list[dict[str, object]]] = {}
    for row in rows:
        by.setdefault((str(row["scenario"]), str(row["broker"])), []).append(row)
    lines = [
        "| scenario | metric | TideMQ | Mosquitto | amqtt | TideMQ / Mosquitto | target "
        "| broker CPU % (T / M / A) | lost · dup · misrouted (TideMQ) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario in SCENARIOS:
        if not any(k[0] == scenario for k in by):
            continue
        conn = scenario.startswith("conn")
        lat = scenario.startswith("lat")

        def metric(broker: str, key: str, scen: str = scenario) -> float | None:
            vals: list[float] = []
            for r in by.get((scen, broker), []):
                value = r.get(key)
                if key.startswith("lat_"):
                    value = (r.get("lat_us") or {}).get(key[4:])  # type: ignore[attr-defined]
                if isinstance(value, int | float):
                    vals.append(float(value))
            return median(vals)

        key = "connect_rate" if conn else "lat_p50" if lat else "recv_rate"
        label = "conn/s" if conn else "p50 µs" if lat else "msg/s"
        t, m, a = (metric(b, key) for b in ("tidemq", "mosquitto", "amqtt"))
        ratio = f"{t / m:.2f}" if t and m else "–"
        cpu = " / ".join(
            f"{c:.0f}" if c is not None else "–"
            for c in (metric(b, "broker_cpu_pct") for b in ("tidemq", "mosquitto", "amqtt"))
        )
        errs = by.get((scenario, "tidemq"), [])
        lost = sum(int(r.get("lost") or 0) for r in errs)  # type: ignore[call-overload]
        dup = sum(int(r.get("dup_or_reorder") or 0) for r in errs)  # type: ignore[call-overload]
        mis = sum(int(r.get("misrouted") or 0) for r in errs)  # type: ignore[call-overload]

        def fmt(v: float | None) -> str:
            return "–" if v is None else f"{v:,.0f}"

        lines.append(
            f"| {scenario} | {label} | {fmt(t)} | {fmt(m)} | {fmt(a)} | {ratio} | "
            f"{TARGETS[scenario]} | {cpu} | {lost} · {dup} · {mis} |"
        )
        if lat:
            p99 = [metric(b, "lat_p99") for b in ("tidemq", "mosquitto", "amqtt")]
            sat = sum(1 for r in errs if r.get("saturated"))
            lines.append(
                f"| {scenario} | p99 µs | {fmt(p99[0])} | {fmt(p99[1])} | {fmt(p99[2])} | | "
                f"| | TideMQ saturated in {sat} run(s) |"
            )
        if conn:
            kib = [metric(b, "broker_kib_per_conn") for b in ("tidemq", "mosquitto", "amqtt")]
            lines.append(
                "| conn-10k | KiB/conn | "
                + " | ".join("–" if k is None else f"{k:.2f}" for k in kib)
                + " | | | | |"
            )
    return "\n".join(lines)


def versions(python: str) -> str:
    mosq = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout
    mosq_v = mosq.splitlines()[0] if mosq else "mosquitto (unknown version)"
    py = sh(python, "-c", "import sys, tidemq; print(tidemq.__version__, sys.version.split()[0])")
    probe = "import tidemq.loops as lp; print('uvloop' if lp.uvloop_available() else 'asyncio')"
    loop = sh(python, "-c", probe)
    return f"TideMQ {py.split()[0]} (Python {py.split()[1]}, {loop}); {mosq_v}; amqtt 0.12.1"


def write_doc(table: str, header: str) -> None:
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    block = f"{START}\n{header}\n\n{table}\n{END}"
    if START in text and END in text:
        before, rest = text.split(START, 1)
        _, after = rest.split(END, 1)
        text = before + block + after
    else:
        title = "## Broker throughput, latency and connections (bench/compare.py)"
        text = text.rstrip() + f"\n\n{title}\n\n"
        text += block + "\n"
    DOC.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-s", "--scenario", action="append", help="scenario (repeatable); default: all")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--python", default=sys.executable, help="interpreter that runs tidemq serve")
    ap.add_argument("--out", default=str(MQB_DIR / "compare.jsonl"))
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args()
    scenarios = args.scenario or SCENARIOS
    MQB_DIR.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.unlink(missing_ok=True)
    specs = start_brokers(args.python)
    try:
        cmd = [sys.executable, str(SHARED / "compare.py"), "--reps", str(args.reps)]
        cmd += ["--out", str(out)]
        cmd += [f"-b{spec}" for spec in [specs[1], specs[0], specs[2]]]  # Mosquitto = reference
        for scenario in scenarios:
            cmd += ["-s", scenario]
        cmd += ["--restart-cmd", f"{ROOT / 'bench' / 'restart.sh'} {{name}}"]
        env = dict(os.environ, PYTHON=args.python, MQB_DIR=str(MQB_DIR))
        subprocess.run(cmd, check=True, env=env)
    finally:
        stop_brokers(args.python)
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    table = summarise(rows)
    print(table)
    if not args.no_write:
        header = (
            f"Run {dt.date.today().isoformat()} on {platform.node()} "
            f"({os.cpu_count()} vCPU, {platform.system()} {platform.release()}), "
            f"{args.reps} alternating repetitions, medians; brokers pinned to CPU 0, mqload to "
            f"CPU 1. {versions(args.python)}."
        )
        write_doc(table, header)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
