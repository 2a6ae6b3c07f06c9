#!/usr/bin/env bash
# Benchmark: start a release broker on a fresh temp data dir, run the
# librdkafka load generator (benches/loadgen.rs) against it, print a Markdown
# table. Object-store requests per GiB and cache hit ratios come from the
# broker's Prometheus endpoint.
#
#   ./scripts/bench.sh [loadgen flags...]          # file:// store + SQLite (the embedded default)
#   ./scripts/bench.sh --s3 [loadgen flags...]     # a local S3 server (moto) + SQLite
#
# Extra broker flags: TRIBUTARY_BENCH_ARGS="--flush-interval-ms 100" ./scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}"
s3=0
if [ "${1:-}" = "--s3" ]; then s3=1; shift; fi
cargo build --release -q -p tributary-cli --bin tributary --example loadgen
bin="$CARGO_TARGET_DIR/release"
data=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 150); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; done; rm -rf "$data"; }
trap cleanup EXIT

port=$(free_port)
mport=$(free_port)
store_args=()
objects_arg=(--objects-dir "$data/objects")
if [ "$s3" -eq 1 ]; then
    venv="${TRIBUTARY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tributary/venv-$(sha256sum tests/python/requirements.txt | cut -c1-16)}"
    if [ ! -x "$venv/bin/moto_server" ]; then
        python3 -m venv "$venv" && "$venv/bin/pip" install -q -r tests/python/requirements.txt
    fi
    s3port=$(free_port)
    "$venv/bin/moto_server" -H 127.0.0.1 -p "$s3port" >"$data/moto.log" 2>&1 &
    pids+=($!)
    wait_port "$s3port"
    export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
    url="s3://bench/run?endpoint=http://127.0.0.1:$s3port&path_style=true&region=us-east-1"
    "$bin/tributary" init --object-store "$url" --create-bucket
    store_args=(--object-store "$url")
    objects_arg=()
fi
# shellcheck disable=SC2086
"$bin/tributary" serve --listen "127.0.0.1:$port" --data-dir "$data" --metrics-listen "127.0.0.1:$mport" \
    "${store_args[@]}" ${TRIBUTARY_BENCH_ARGS:-} 2>"$data/broker.log" &
broker=$!
pids=("$broker" "${pids[@]}")
wait_port "$port"
store_name=$([ "$s3" -eq 1 ] && echo "S3 (moto, local)" || echo "file:// (local dir)")
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; store: $store_name; broker flags: ${TRIBUTARY_BENCH_ARGS:-<defaults>}"
"$bin/examples/loadgen" --bootstrap "127.0.0.1:$port" --metrics-url "http://127.0.0.1:$mport/metrics" \
    "${objects_arg[@]}" "$@"
echo "broker peak RSS: $(grep VmHWM /proc/$broker/status | awk '{print $2, $3}')"
