#!/usr/bin/env python3
"""Summarise benchmark runs written by `loadgen --json` (scripts/bench.sh).

    bench-report.py RUN.json...            Markdown table: the median of each
                                           number over the runs (with min-max)
    bench-report.py --svg OUT.svg RUN.json chart of one run: throughput and
                                           latency percentiles over time
                                           (needs matplotlib)
"""

import argparse
import json
import statistics
import sys

# (label, path into the JSON, unit)
ROWS = [
    ("produce at saturation", ("produce", "mb_per_s"), "MB/s"),
    ("produce at saturation", ("produce", "records_per_s"), "records/s"),
    ("produce errors", ("produce", "errors"), ""),
    ("PUTs per GiB at saturation", ("produce", "puts_per_gib"), ""),
    ("broker CPU per GiB produced", ("produce", "broker_cpu_secs_per_gib"), "s"),
    ("consume from the beginning", ("consume", "mb_per_s"), "MB/s"),
    ("consume from the beginning", ("consume", "records_per_s"), "records/s"),
    ("GETs per GiB, catch-up read", ("consume", "gets_per_gib"), ""),
    ("broker CPU per GiB consumed", ("consume", "broker_cpu_secs_per_gib"), "s"),
    ("produce-ack latency p50", ("latency", "ack_latency_ms", "p50"), "ms"),
    ("produce-ack latency p90", ("latency", "ack_latency_ms", "p90"), "ms"),
    ("produce-ack latency p99", ("latency", "ack_latency_ms", "p99"), "ms"),
    ("produce-ack latency p99.9", ("latency", "ack_latency_ms", "p99_9"), "ms"),
    ("produce-ack latency max", ("latency", "ack_latency_ms", "max"), "ms"),
    ("end-to-end latency p50", ("latency", "e2e_latency_ms", "p50"), "ms"),
    ("end-to-end latency p99", ("latency", "e2e_latency_ms", "p99"), "ms"),
    ("end-to-end latency p99.9", ("latency", "e2e_latency_ms", "p99_9"), "ms"),
    ("end-to-end latency max", ("latency", "e2e_latency_ms", "max"), "ms"),
    ("PUTs per GiB at the fixed rate", ("latency", "puts_per_gib"), ""),
    ("GETs per GiB, tail consumers", ("latency", "tail_gets_per_gib"), ""),
    ("broker peak RSS", ("broker_peak_rss_bytes",), "MiB"),
]


def dig(run, path):
    value = run
    for key in path:
        if not isinstance(value, dict) or value.get(key) is None:
            return None
        value = value[key]
    return value


def fmt(v, unit=""):
    if unit == "s":
        return f"{v:.2f}"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}"


def table(runs):
    settings = runs[0].get("settings", {})
    print(
        f"{len(runs)} run(s); {settings.get('record_size')} B values, "
        f"{settings.get('partitions')} partitions, {settings.get('producers')} producer(s), "
        f"{settings.get('consumers')} consumer(s), acks={settings.get('acks')}, "
        f"compression={settings.get('compression')}, fixed rate {settings.get('rate')} records/s"
    )
    print()
    print("| metric | median | min - max |")
    print("|---|---|---|")
    for label, path, unit in ROWS:
        values = [dig(r, path) for r in runs]
        values = [v for v in values if v is not None]
        if not values:
            continue
        if unit == "MiB":
            values = [v / (1 << 20) for v in values]
        med = statistics.median(values)
        unit_s = f" {unit}" if unit else ""
        print(
            f"| {label} | {fmt(med, unit)}{unit_s} | "
            f"{fmt(min(values), unit)} - {fmt(max(values), unit)} |"
        )


def chart(run, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = run["timeline"]
    t = [r["t"] + r.get("width", 1) / 2 for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    top.plot(t, [r["produce_mb_s"] for r in rows], label="produced (acknowledged)")
    top.plot(t, [r["consume_mb_s"] for r in rows], label="consumed")
    top.set_ylabel("MB/s")
    mem = [(x, r["broker_rss_mib"]) for x, r in zip(t, rows) if r.get("broker_rss_mib") is not None]
    if mem:
        right = top.twinx()
        right.plot(*zip(*mem), color="tab:gray", linestyle=":", label="broker RSS (right, MiB)")
        right.set_ylabel("broker RSS, MiB")
        right.set_ylim(bottom=0)
        right.legend(loc="upper center")
    top.legend(loc="upper right")
    top.grid(alpha=0.3)
    for key, label in [
        ("ack_p50_ms", "produce-ack p50"),
        ("ack_p99_ms", "produce-ack p99"),
        ("e2e_p50_ms", "end-to-end p50"),
        ("e2e_p99_ms", "end-to-end p99"),
    ]:
        # A gap (no samples in a slot) breaks the line.
        ys = [r[key] if r.get(key) is not None else float("nan") for r in rows]
        if any(y == y for y in ys):
            bottom.plot(t, ys, marker=".", markersize=3, label=label)
    bottom.set_yscale("log")
    bottom.set_ylabel("latency, ms (log)")
    bottom.set_xlabel("seconds since start")
    bottom.legend(loc="upper right")
    bottom.grid(alpha=0.3, which="both")
    for span in run.get("phases", []):
        for ax in (top, bottom):
            ax.axvspan(span["from"], span["to"], alpha=0.06, color="k")
        top.annotate(span["phase"], (span["from"], 1.01), xycoords=("data", "axes fraction"))
    s = run.get("settings", {})
    fig.suptitle(
        f"{run.get('label', '')}: {s.get('record_size')} B records, acks={s.get('acks')}, "
        f"{s.get('partitions')} partitions, fixed rate {s.get('rate')} records/s",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="JSON files from loadgen --json")
    parser.add_argument("--svg", help="draw the (last) run into this file")
    args = parser.parse_args()
    runs = []
    for path in args.runs:
        with open(path) as f:
            runs.append(json.load(f))
    if args.svg:
        chart(runs[-1], args.svg)
    else:
        table(runs)


if __name__ == "__main__":
    sys.exit(main())
