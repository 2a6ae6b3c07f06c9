#!/usr/bin/env bash
# Benchmark: start a release broker on a fresh temp data dir (file:// store +
# SQLite), run the librdkafka load generator against it, print a Markdown table.
# Usage: ./scripts/bench.sh [loadgen flags...]   e.g. --records 1000000 --rate 2000
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}"
cargo build --release -q -p tributary-cli --bin tributary --example loadgen
bin="$CARGO_TARGET_DIR/release"
data=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin/tributary" serve --listen "127.0.0.1:$port" --data-dir "$data" ${TRIBUTARY_BENCH_ARGS:-} 2>"$data/broker.log" &
broker=$!
cleanup() { kill "$broker" 2>/dev/null; wait "$broker" 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; broker flags: ${TRIBUTARY_BENCH_ARGS:-<defaults>}"
"$bin/examples/loadgen" --bootstrap "127.0.0.1:$port" --objects-dir "$data/objects" "$@"
echo "broker peak RSS: $(grep VmHWM /proc/$broker/status | awk '{print $2, $3}')"
