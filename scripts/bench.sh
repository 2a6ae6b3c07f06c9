#!/usr/bin/env bash
# Benchmark: start release brokers on fresh stores, run the librdkafka load
# generator (benches/loadgen.rs) against them, print a Markdown table.
# Object-store requests per GiB, cache hit ratios and broker peak RSS come
# from the brokers' Prometheus endpoints.
#
#   ./scripts/bench.sh [options] [loadgen flags...]
#
# Options (they combine):
#   --s3            a local S3 server (moto) instead of a local directory
#   --memory        everything in memory (memory:// + sqlite::memory:):
#                   what the broker does without storage costs
#   --postgres      PostgreSQL (a throwaway cluster, fsync on) instead of SQLite
#   --brokers N     N brokers sharing the store and a throwaway PostgreSQL
#   --tls           clients connect over SASL_SSL (TLS 1.3, SCRAM-SHA-512,
#                   a throwaway CA; the ACL authorizer on, the bench user a
#                   super user) instead of PLAINTEXT
#   --transactional producers write in transactions of 1,000 records each
#                   (loadgen --transaction-records 1000; commit latency is
#                   reported); consumers read read_committed
#   --runs N        N runs, each on fresh brokers and stores; prints the
#                   median of each number (scripts/bench-report.py)
#   --out DIR       keep each run's JSON (run-1.json, ...) in DIR
#   --svg FILE      draw the last run (throughput and latency over time) into
#                   FILE with matplotlib (installed in a cached venv)
#
# Loadgen flags: --records, --duration, --record-size, --partitions,
# --producers, --consumers, --acks, --compression, --rate, --latency-secs,
# --phases, --producer-config k=v, --consumer-config k=v (see
# `loadgen --help`). Extra broker flags:
#   TRIBUTARY_BENCH_ARGS="--flush-interval-ms 100" ./scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/tributary"
s3=0
memory=0
brokers=1
pg=0
runs=1
tls=0
out=""
svg=""
loadgen_args=()
while [ $# -gt 0 ]; do
    case "$1" in
    --s3) s3=1; shift ;;
    --memory) memory=1; shift ;;
    --postgres) pg=1; shift ;;
    --brokers) brokers="$2"; pg=1; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --tls) tls=1; shift ;;
    --transactional) loadgen_args+=(--transaction-records 1000 --consumer-config isolation.level=read_committed); shift ;;
    --out) out="$2"; shift 2 ;;
    --svg) svg="$2"; shift 2 ;;
    *) loadgen_args+=("$1"); shift ;;
    esac
done
cargo build --release -q -p tributary-cli --bin tributary --example loadgen
bin="$CARGO_TARGET_DIR/release"
data=$(mktemp -d)
chmod 755 "$data"
if [ -z "$out" ]; then out="$cache/bench-results/$(date +%Y%m%dT%H%M%S)"; fi
mkdir -p "$out"
rm -f "$out"/run-*.json
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 150); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
pids=()
broker_pids=()
pg_stop=()
stop_brokers() {
    for p in "${broker_pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    broker_pids=()
}
cleanup() {
    stop_brokers
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    if [ "${#pg_stop[@]}" -gt 0 ]; then "${pg_stop[@]}" >/dev/null 2>&1 || true; fi
    rm -rf "$data"
}
trap cleanup EXIT

store_name="file:// (local dir)"
s3url=""
if [ "$s3" -eq 1 ]; then
    venv="${TRIBUTARY_VENV:-$cache/venv-$(sha256sum tests/python/requirements.txt | cut -c1-16)}"
    if [ ! -x "$venv/bin/moto_server" ]; then
        python3 -m venv "$venv" && "$venv/bin/pip" install -q -r tests/python/requirements.txt
    fi
    s3port=$(free_port)
    "$venv/bin/moto_server" -H 127.0.0.1 -p "$s3port" >"$data/moto.log" 2>&1 &
    pids+=($!)
    wait_port "$s3port"
    export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
    s3url="endpoint=http://127.0.0.1:$s3port&path_style=true&region=us-east-1"
    store_name="S3 (moto $("$venv/bin/python" -c 'import moto; print(moto.__version__)'), local)"
fi
meta_name="SQLite"
if [ "$memory" -eq 1 ]; then store_name="memory://"; meta_name="SQLite in memory"; fi
pg_url=""
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
    pg_url="postgres://postgres@127.0.0.1:$pgport/postgres"
    meta_name="PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}')"
fi

listener_proto=PLAINTEXT
tls_args=()
client_args=()
if [ "$tls" -eq 1 ]; then
    # A throwaway CA and server certificate (EC P-256), one SCRAM user.
    ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 "${ec[@]}" -keyout "$data/ca.key" -out "$data/ca.pem" -days 2 \
        -subj "/CN=Tributary bench CA" 2>/dev/null
    openssl req "${ec[@]}" -keyout "$data/server.key" -out "$data/server.csr" \
        -subj "/CN=localhost" 2>/dev/null
    echo "subjectAltName=IP:127.0.0.1,DNS:localhost" >"$data/san.ext"
    openssl x509 -req -in "$data/server.csr" -CA "$data/ca.pem" -CAkey "$data/ca.key" \
        -CAcreateserial -out "$data/server.pem" -days 2 -extfile "$data/san.ext" 2>/dev/null
    listener_proto=SASL_SSL
    tls_args=(--tls-cert "$data/server.pem" --tls-key "$data/server.key"
        --sasl-mechanisms SCRAM-SHA-512 --authorizer acl --super-users User:bench)
    client_args=(--client-config security.protocol=SASL_SSL
        --client-config sasl.mechanisms=SCRAM-SHA-512
        --client-config sasl.username=bench --client-config sasl.password=bench-secret
        --client-config "ssl.ca.location=$data/ca.pem")
fi

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; brokers: $brokers; store: $store_name; metadata: $meta_name; listener: $listener_proto; broker flags: ${TRIBUTARY_BENCH_ARGS:-<defaults>}"
for run in $(seq "$runs"); do
    # Fresh stores per run: a new directory, bucket prefix and schema.
    store_args=(--object-store "file://$data/run$run/objects")
    objects_arg=(--objects-dir "$data/run$run/objects")
    if [ "$s3" -eq 1 ]; then
        url="s3://bench/run$run?$s3url"
        "$bin/tributary" init --object-store "$url" --create-bucket >/dev/null
        store_args=(--object-store "$url")
        objects_arg=()
    fi
    meta_args=()
    if [ "$pg" -eq 1 ]; then meta_args=(--metadata "$pg_url?schema=run$run"); fi
    if [ "$memory" -eq 1 ]; then
        store_args=(--object-store memory://)
        objects_arg=()
        meta_args=(--metadata sqlite::memory:)
    fi
    bootstrap=()
    metrics=()
    if [ "$tls" -eq 1 ]; then
        # The user goes into the run's metadata store (the first broker's
        # SQLite file, or the shared PostgreSQL schema) before any broker.
        users_store=(--data-dir "$data/run$run/b1")
        if [ "$pg" -eq 1 ]; then users_store=("${meta_args[@]}"); fi
        mkdir -p "$data/run$run/b1"
        TRIBUTARY_USER_PASSWORD=bench-secret "$bin/tributary" users add bench "${users_store[@]}" >/dev/null
    fi
    for id in $(seq "$brokers"); do
        port=$(free_port)
        mport=$(free_port)
        # shellcheck disable=SC2086
        "$bin/tributary" serve --listeners "$listener_proto://127.0.0.1:$port" "${tls_args[@]}" \
            --data-dir "$data/run$run/b$id" \
            --node-id "$id" --metrics-listen "127.0.0.1:$mport" "${store_args[@]}" \
            "${meta_args[@]}" ${TRIBUTARY_BENCH_ARGS:-} 2>"$data/broker-$run-$id.log" &
        broker_pids+=($!)
        wait_port "$port"
        bootstrap+=("127.0.0.1:$port")
        metrics+=(--metrics-url "http://127.0.0.1:$mport/metrics")
    done
    [ "$runs" -gt 1 ] && echo "## run $run of $runs"
    "$bin/examples/loadgen" --bootstrap "$(IFS=,; echo "${bootstrap[*]}")" "${metrics[@]}" \
        "${objects_arg[@]}" --json "$out/run-$run.json" \
        --label "$store_name, $meta_name, $brokers broker(s), $listener_proto, run $run" \
        "${client_args[@]}" "${loadgen_args[@]}"
    stop_brokers
done
if [ "$runs" -gt 1 ]; then
    echo "## median of $runs runs"
    python3 scripts/bench-report.py "$out"/run-*.json
fi
if [ -n "$svg" ]; then
    plot_venv="$cache/plot-venv-$(sha256sum scripts/plot-requirements.txt | cut -c1-16)"
    if [ ! -x "$plot_venv/bin/python" ] || ! "$plot_venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
        python3 -m venv "$plot_venv" && "$plot_venv/bin/pip" install -q -r scripts/plot-requirements.txt
    fi
    "$plot_venv/bin/python" scripts/bench-report.py --svg "$svg" "$out/run-$runs.json" >/dev/null
    echo "chart: $svg"
fi
echo "results: $out"
