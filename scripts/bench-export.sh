#!/usr/bin/env bash
# Export benchmark: fill a topic on a fresh release broker (file:// store +
# SQLite) with JSON events (benches/fill.rs), then run `tributary export`
# twice (raw values, then JSON values decoded into columns) while the broker
# keeps serving, and report records/s, MB/s of source data, the exporter's
# peak memory and the Parquet size against the segment bytes.
#
#   ./scripts/bench-export.sh [--records N] [--record-size BYTES] [--compression lz4]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}"
records=2200000
size=1000
codec=lz4
while [ $# -gt 0 ]; do
    case "$1" in
    --records) records="$2"; shift 2 ;;
    --record-size) size="$2"; shift 2 ;;
    --compression) codec="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
cargo build --release -q -p tributary-cli --bin tributary --example fill
bin="$CARGO_TARGET_DIR/release"
data=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 150); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
broker=""
cleanup() { [ -n "$broker" ] && kill "$broker" 2>/dev/null && wait "$broker" 2>/dev/null; rm -rf "$data"; }
trap cleanup EXIT

port=$(free_port)
"$bin/tributary" serve --listen "127.0.0.1:$port" --data-dir "$data/broker" 2>"$data/broker.log" &
broker=$!
wait_port "$port"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
"$bin/examples/fill" --bootstrap "127.0.0.1:$port" --records "$records" --record-size "$size" --compression "$codec"
echo "segment objects: $(du -sb "$data/broker/objects" | cut -f1) bytes (producer compression $codec)"

# Runs an export, sampling its peak RSS; prints the JSON summary and the peak.
run_export() {
    local dest="$1"; shift
    "$bin/tributary" export --data-dir "$data/broker" --topic events --to "file://$dest" --json "$@" \
        >"$data/summary.json" &
    local pid=$! peak=0 rss
    while kill -0 "$pid" 2>/dev/null; do
        rss=$(awk '/VmHWM/{print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        [ "${rss:-0}" -gt "$peak" ] && peak=$rss
        sleep 0.2
    done
    wait "$pid"
    python3 - "$data/summary.json" "$peak" "$*" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
peak_mib = int(sys.argv[2]) / 1024
secs = s["seconds"]
print(f"| export {sys.argv[3] or '(raw values)'} | {s['records']:,} records in {secs:.1f} s | "
      f"{s['records'] / secs:,.0f} records/s | {s['source_bytes'] / secs / 1e6:.0f} MB/s of segments | "
      f"peak RSS {peak_mib:.0f} MiB | Parquet {s['output_bytes'] / 1e6:,.0f} MB = "
      f"{s['output_bytes'] / s['source_bytes']:.2f} x the {s['source_bytes'] / 1e6:,.0f} MB of segment data | "
      f"{s['rejected']} rejected |")
PY
}
run_export "$data/raw"
run_export "$data/json" --value-format json --key-format string
