#!/usr/bin/env bash
# Benchmark: start a release broker on a fresh temp data dir, run the
# librdkafka load generator (benches/loadgen.rs) against it, print a Markdown
# table. Object-store requests per GiB and cache hit ratios come from the
# broker's Prometheus endpoint.
#
#   ./scripts/bench.sh [loadgen flags...]          # file:// store + SQLite (the embedded default)
#   ./scripts/bench.sh --s3 [loadgen flags...]     # a local S3 server (moto) + SQLite
#   ./scripts/bench.sh --brokers 3 [...]           # 3 brokers sharing a throwaway PostgreSQL
#                                                  # (--postgres: one broker on PostgreSQL)
#
# Options combine (--s3 --brokers 2). The PostgreSQL cluster runs with its
# default durability settings (fsync on), as a user's would.
#
# Extra broker flags: TRIBUTARY_BENCH_ARGS="--flush-interval-ms 100" ./scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}"
s3=0
brokers=1
pg=0
while :; do
    case "${1:-}" in
    --s3) s3=1; shift ;;
    --postgres) pg=1; shift ;;
    --brokers) brokers="$2"; pg=1; shift 2 ;;
    *) break ;;
    esac
done
cargo build --release -q -p tributary-cli --bin tributary --example loadgen
bin="$CARGO_TARGET_DIR/release"
data=$(mktemp -d)
chmod 755 "$data"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 150); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
pids=()
pg_stop=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; done
    if [ "${#pg_stop[@]}" -gt 0 ]; then "${pg_stop[@]}" >/dev/null 2>&1 || true; fi
    rm -rf "$data"
}
trap cleanup EXIT

store_args=(--object-store "file://$data/objects")
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
meta_args=()
meta_name="SQLite"
if [ "$pg" -eq 1 ]; then
    pgbin=$(dirname "$(command -v initdb 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
    as_pg=()
    if [ "$(id -u)" -eq 0 ]; then as_pg=(runuser -u postgres --); fi
    mkdir "$data/pg"
    [ "${#as_pg[@]}" -gt 0 ] && chown postgres "$data/pg"
    "${as_pg[@]}" "$pgbin/initdb" -D "$data/pg/data" -A trust -U postgres >"$data/pg-init.log"
    pgport=$(free_port)
    "${as_pg[@]}" "$pgbin/pg_ctl" -D "$data/pg/data" -l "$data/pg/log" -w \
        -o "-p $pgport -k $data/pg -c listen_addresses=127.0.0.1" start >/dev/null
    pg_stop=("${as_pg[@]}" "$pgbin/pg_ctl" -D "$data/pg/data" -m immediate -w stop)
    meta_args=(--metadata "postgres://postgres@127.0.0.1:$pgport/postgres")
    meta_name="PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}')"
fi

bootstrap=()
metrics=()
broker_pids=()
for id in $(seq "$brokers"); do
    port=$(free_port)
    mport=$(free_port)
    # shellcheck disable=SC2086
    "$bin/tributary" serve --listen "127.0.0.1:$port" --data-dir "$data/b$id" --node-id "$id" \
        --metrics-listen "127.0.0.1:$mport" "${store_args[@]}" "${meta_args[@]}" \
        ${TRIBUTARY_BENCH_ARGS:-} 2>"$data/broker-$id.log" &
    broker_pids+=($!)
    pids=("$!" "${pids[@]}")
    wait_port "$port"
    bootstrap+=("127.0.0.1:$port")
    metrics+=(--metrics-url "http://127.0.0.1:$mport/metrics")
done
store_name=$([ "$s3" -eq 1 ] && echo "S3 (moto, local)" || echo "file:// (local dir)")
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; brokers: $brokers; store: $store_name; metadata: $meta_name; broker flags: ${TRIBUTARY_BENCH_ARGS:-<defaults>}"
"$bin/examples/loadgen" --bootstrap "$(IFS=,; echo "${bootstrap[*]}")" "${metrics[@]}" \
    "${objects_arg[@]}" "$@"
for p in "${broker_pids[@]}"; do
    echo "broker pid $p peak RSS: $(grep VmHWM /proc/"$p"/status | awk '{print $2, $3}')"
done
