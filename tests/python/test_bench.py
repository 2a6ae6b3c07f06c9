"""The benchmark (scripts/bench.sh + benches/loadgen.rs) runs end to end on a
tiny load and reports what it promises: every acknowledged record read back,
latency percentiles from both producer acks and consumers, object-store
requests per GiB and broker RSS from the broker's metrics, and a median
table over runs (scripts/bench-report.py)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_small_run(tmp_path):
    out = tmp_path / "results"
    run = subprocess.run(
        [
            str(ROOT / "scripts" / "bench.sh"),
            "--runs", "2",
            "--out", str(out),
            "--records", "20000",
            "--producers", "2",
            "--consumers", "2",
            "--rate", "2000",
            "--latency-secs", "3",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "## median of 2 runs" in run.stdout, run.stdout

    for path in sorted(out.glob("run-*.json")):
        r = json.loads(path.read_text())
        assert r["produce"]["records"] == 20000 and r["produce"]["errors"] == 0
        assert r["produce"]["bytes"] == 20000 * 1024
        assert r["produce"]["puts_per_gib"] > 0
        assert r["consume"]["records"] == 20000
        lat = r["latency"]
        assert lat["errors"] == 0
        # 2000 records/s for 3 s, give or take the pacing of two producers.
        assert 5000 <= lat["records"] <= 6100, lat
        assert lat["consumed"] == lat["records"]
        for key in ("ack_latency_ms", "e2e_latency_ms"):
            p = lat[key]
            assert p["count"] > 0
            assert 0 < p["p50"] <= p["p90"] <= p["p99"] <= p["p99_9"] <= p["max"], p
        # A record is consumed after it is written, so end-to-end latency is
        # at least the flush that made it readable.
        assert lat["e2e_latency_ms"]["p50"] > 0
        assert r["broker_peak_rss_bytes"] > 10 << 20
        phases = [p["phase"] for p in r["phases"]]
        assert phases == ["produce", "consume", "latency"]
        produced = sum(row["produce_mb_s"] * row["width"] for row in r["timeline"])
        assert abs(produced * 1e6 - (r["produce"]["bytes"] + lat["bytes"])) < 1e3

    table = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench-report.py"), *map(str, sorted(out.glob("run-*.json")))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "| produce at saturation |" in table and "| end-to-end latency p99 |" in table, table
