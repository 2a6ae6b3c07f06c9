#!/usr/bin/env bash
# The project's test command (README: ./scripts/test.sh). Idempotent; works
# as root on a fresh Debian machine.
#
#   ./scripts/test.sh           every tier (what .ci/run runs):
#   1. installs kcat, postgresql, openssl and its headers (apt), KafkaJS (npm) if missing and a cached Python venv with
#      tests/python/requirements.txt,
#   2. cargo fmt --check, clippy -D warnings, the layout check, release build,
#   3. cargo test --workspace (Rust unit + end-to-end tests with rdkafka), then
#      the end-to-end tests again on a moto S3 server (TRIBUTARY_TEST_STORE=s3),
#   4. the deterministic simulation (crates/sim): 1000 seeds, each replayed
#      twice to check determinism (scripts/simulate.sh runs more),
#   5. pytest tests/python (confluent-kafka and kcat against the release binary),
#   6. every fuzz target for FUZZ_SECONDS (default 15) each (scripts/fuzz.sh;
#      installs cargo-fuzz, pinned, into ~/.cache/tributary/tools if missing).
#   ./scripts/test.sh --quick   fmt, clippy, unit tests and the SQLite conformance
#                               suite; no PostgreSQL, S3, broker process or Python
#                               (nextest profile `quick`, .config/nextest.toml).
# Every step runs even if an earlier one failed (except those that need its
# output); the exit code is non-zero if any step failed.
set -uo pipefail

QUICK=0
for arg in "$@"; do
    case $arg in
    --quick) QUICK=1 ;;
    -h | --help)
        sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "unknown option: $arg (try --help)" >&2
        exit 2
        ;;
    esac
done
cd "$(dirname "$0")/.."
ROOT=$(pwd)

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}
CACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/tributary
REQUIREMENTS=tests/python/requirements.txt
PYTHON=${PYTHON:-python3}

SUMMARY=()
FAILED=0

log() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

# step NAME CMD...: runs CMD, records PASS/FAIL with its duration.
step() {
    local name=$1
    shift
    log "$name"
    local start=$SECONDS
    if "$@"; then
        SUMMARY+=("PASS  $name ($((SECONDS - start))s)")
        return 0
    else
        local rc=$?
        SUMMARY+=("FAIL  $name (exit $rc, $((SECONDS - start))s)")
        FAILED=1
        return $rc
    fi
}

skip() {
    SUMMARY+=("SKIP  $1 ($2)")
    FAILED=1
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        as_root apt-get update -qq || return 1
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@"
}

install_kcat() {
    if command -v kcat >/dev/null 2>&1; then
        echo "kcat present: $(kcat -V 2>&1 | grep -m1 -i 'librdkafka' || echo unknown version)"
        return 0
    fi
    apt_install kcat && kcat -V >/dev/null
}

# PostgreSQL server binaries for the metadata tests (initdb/pg_ctl/postgres;
# crates/testkit finds them on PATH or under /usr/lib/postgresql/*/bin).
install_postgres() {
    if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        echo "postgresql present: $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -1)"
        return 0
    fi
    apt_install postgresql
}

# openssl makes the throwaway CA and certificate of the PostgreSQL TLS test.
install_openssl() {
    if command -v openssl >/dev/null 2>&1; then
        echo "openssl present: $(openssl version)"
        return 0
    fi
    apt_install openssl
}

# OpenSSL headers: librdkafka in the Rust tests is built with TLS and SASL
# (the rdkafka crate's `ssl` feature links the system OpenSSL).
install_ssl_headers() {
    if command -v pkg-config >/dev/null 2>&1 && pkg-config --exists openssl; then
        echo "OpenSSL headers present: $(pkg-config --modversion openssl)"
        return 0
    fi
    apt_install libssl-dev pkg-config
}

# KafkaJS (a Node.js client with its own protocol code) for the security
# tests, installed once per version under the cache.
KAFKAJS_VERSION=2.2.4
KAFKAJS_DIR=$CACHE_DIR/kafkajs-$KAFKAJS_VERSION
install_kafkajs() {
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        apt_install nodejs npm || return 1
    fi
    if [ -f "$KAFKAJS_DIR/node_modules/kafkajs/package.json" ]; then
        echo "kafkajs present: $KAFKAJS_DIR"
        return 0
    fi
    mkdir -p "$KAFKAJS_DIR" &&
        npm install --silent --no-audit --no-fund --prefix "$KAFKAJS_DIR" "kafkajs@$KAFKAJS_VERSION"
}

# libFuzzer (built by the fuzz targets' libfuzzer-sys) is C++.
install_cxx() {
    if command -v c++ >/dev/null 2>&1; then
        echo "c++ present: $(c++ --version | head -1)"
        return 0
    fi
    apt_install g++
}

# A venv per requirements file content, reused across runs.
VENV=""
setup_venv() {
    if ! command -v "$PYTHON" >/dev/null 2>&1 || ! "$PYTHON" -m venv --help >/dev/null 2>&1; then
        apt_install python3 python3-venv python3-pip || return 1
        PYTHON=python3
    fi
    local sha
    sha=$(sha256sum "$REQUIREMENTS" | cut -c1-16)
    VENV=$CACHE_DIR/venv-$sha
    if [ -f "$VENV/.complete" ] &&
        "$VENV/bin/python" -c 'import confluent_kafka, pytest, duckdb, pyarrow, aiokafka, jwt' >/dev/null 2>&1; then
        echo "venv cached: $VENV"
        return 0
    fi
    rm -rf "$VENV"
    mkdir -p "$CACHE_DIR"
    "$PYTHON" -m venv "$VENV" &&
        "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQUIREMENTS" &&
        "$VENV/bin/python" -c 'import confluent_kafka, pytest, duckdb, pyarrow, aiokafka, jwt' &&
        touch "$VENV/.complete"
}

have_nextest() { cargo nextest --version >/dev/null 2>&1; }

# Tier quick: unit tests and the SQLite conformance suite (only the targets
# it runs are built, so the end-to-end binary is not linked).
quick_tests() {
    if have_nextest; then
        cargo nextest run --workspace --lib --bins --test conformance --profile quick
    else
        cargo test --workspace --lib --bins -- --skip postgres::tests --skip postgres::registry &&
            cargo test -p tributary-meta --test conformance -- --skip postgres::
    fi
}

# Tier default (profile ci: a hung test is stopped): every Rust test.
cargo_tests() {
    # The s3:// tests (tests/rust/s3_*.rs) start moto_server from this venv.
    if [ -n "$VENV" ]; then export TRIBUTARY_VENV=$VENV; fi
    if have_nextest; then
        # nextest does not run doctests; run them separately.
        cargo nextest run --workspace --profile ci && cargo test --workspace --doc
    else
        cargo test --workspace --no-fail-fast
    fi
}

# Tier s3: the end-to-end suite again, with every test broker storing its
# segments on its own moto S3 server (tests that pin their store, and the
# PostgreSQL ones, are not repeated).
S3_SKIPPED=(postgres_ crash_orphans:: retention_compaction:: fault_injection:: s3_broker:: stored_data_faults::)
cargo_tests_s3() {
    if [ -n "$VENV" ]; then export TRIBUTARY_VENV=$VENV; fi
    if have_nextest; then
        TRIBUTARY_TEST_STORE=s3 cargo nextest run -p tributary-cli --test e2e --profile s3
    else
        TRIBUTARY_TEST_STORE=s3 cargo test -p tributary-cli --test e2e --no-fail-fast -- \
            $(printf -- '--skip %s ' "${S3_SKIPPED[@]}")
    fi
}

python_tests() {
    TRIBUTARY_BIN="$CARGO_TARGET_DIR/release/tributary" \
        TRIBUTARY_KAFKAJS="$KAFKAJS_DIR/node_modules" \
        "$VENV/bin/python" -m pytest "$ROOT/tests/python" -v
}

summary() {
    printf '\n\033[1m==> summary\033[0m\n'
    printf '%s\n' "${SUMMARY[@]}"
    if [ "$FAILED" -ne 0 ]; then
        echo "RESULT: FAILED"
        exit 1
    fi
    echo "RESULT: all steps passed"
}

if [ "$QUICK" -eq 1 ]; then
    step "install OpenSSL headers" install_ssl_headers
    step "cargo fmt --check" cargo fmt --all -- --check
    step "cargo clippy -D warnings" cargo clippy --workspace --all-targets -- -D warnings
    step "layout (scripts/check-layout.py)" python3 scripts/check-layout.py --narrow-traits
    step "unit tests and SQLite conformance (tier quick)" quick_tests
    summary
    exit 0
fi

step "install kcat" install_kcat
step "install postgresql" install_postgres
step "install openssl" install_openssl
step "install OpenSSL headers" install_ssl_headers
step "install kafkajs" install_kafkajs
step "install g++" install_cxx
VENV_OK=0
step "python venv ($REQUIREMENTS)" setup_venv && VENV_OK=1
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy -D warnings" cargo clippy --workspace --all-targets -- -D warnings
step "layout (scripts/check-layout.py)" python3 scripts/check-layout.py --narrow-traits
BUILD_OK=0
# The load generator too: tests/python/test_bench.py runs scripts/bench.sh.
step "cargo build --release -p tributary-cli" cargo build --release -p tributary-cli --bins --example loadgen && BUILD_OK=1
step "cargo test --workspace" cargo_tests
step "end-to-end tests on S3 (moto)" cargo_tests_s3
step "simulation: 1000 seeds (scripts/simulate.sh)" scripts/simulate.sh --seeds 1000 --check-determinism
if [ "$BUILD_OK" -eq 1 ] && [ "$VENV_OK" -eq 1 ]; then
    step "pytest tests/python" python_tests
else
    skip "pytest tests/python" "needs the release build and the venv"
fi

# Coverage-guided fuzzing: fails on a crash, a hang (10 s per input) or an
# input that makes a parser allocate far beyond its size (README: Fuzzing).
FUZZ_SECONDS=${FUZZ_SECONDS:-15}
step "fuzz targets (${FUZZ_SECONDS}s each)" ./scripts/fuzz.sh --seconds "$FUZZ_SECONDS"

summary
