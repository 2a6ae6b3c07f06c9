#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers that take untrusted bytes
# (fuzz/fuzz_targets/*.rs; README: Fuzzing).
#
#   scripts/fuzz.sh                         every target for 15 s (what ./scripts/test.sh runs)
#   scripts/fuzz.sh --seconds 600 request   one target (or several) for longer
#   scripts/fuzz.sh --replay FILE TARGET    run one saved input (a crash) through TARGET
#   scripts/fuzz.sh --list                  the target names
#
# Uses cargo-fuzz (libFuzzer) on the stable toolchain with `--sanitizer none`:
# our crates forbid unsafe code, so the crashes that matter are panics,
# timeouts (hangs, -timeout per input) and oversized allocations (each
# target fails an input whose heap peak exceeds a small multiple of its
# size; fuzz/src/lib.rs). cargo-fuzz is installed, pinned, into
# ~/.cache/tributary/tools on first use.
#
# The seed corpus in fuzz/corpus/<target> is read-only here: new inputs go to
# ~/.cache/tributary/fuzz/corpus/<target>, crashes to
# ~/.cache/tributary/fuzz/artifacts/<target>/. Exit status is non-zero if
# any target crashed, hung or could not be built.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

CARGO_FUZZ_VERSION=0.13.2
CACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/tributary
TOOLS=$CACHE_DIR/tools
FUZZ_CACHE=$CACHE_DIR/fuzz
# Instrumented builds never share the workspace's target directory.
FUZZ_TARGET_DIR=${FUZZ_TARGET_DIR:-$CACHE_DIR/fuzz-target}
export PATH=$TOOLS/bin:$PATH

SECONDS_PER_TARGET=15
REPLAY=""
TARGETS=()

# The comment block at the top of this file.
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

all_targets() { sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^tributary-fuzz$'; }

while [ $# -gt 0 ]; do
    case $1 in
        --seconds) SECONDS_PER_TARGET=$2; shift 2 ;;
        --replay) REPLAY=$2; shift 2 ;;
        --list) all_targets; exit 0 ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "unknown option $1" >&2; usage >&2; exit 2 ;;
        *) TARGETS+=("$1"); shift ;;
    esac
done
if [ ${#TARGETS[@]} -eq 0 ]; then
    if [ -n "$REPLAY" ]; then
        echo "--replay needs a target name (scripts/fuzz.sh --list)" >&2
        exit 2
    fi
    mapfile -t TARGETS < <(all_targets)
fi
for t in "${TARGETS[@]}"; do
    if ! all_targets | grep -qx "$t"; then
        echo "unknown target $t; targets: $(all_targets | tr '\n' ' ')" >&2
        exit 2
    fi
done

ensure_cargo_fuzz() {
    if cargo fuzz --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION\$"; then
        return 0
    fi
    echo "installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS"
    cargo install --locked --root "$TOOLS" "cargo-fuzz@$CARGO_FUZZ_VERSION"
}

if ! command -v c++ >/dev/null 2>&1; then
    echo "a C++ compiler is needed to build libFuzzer (Debian: apt-get install g++)" >&2
    exit 1
fi
ensure_cargo_fuzz || exit 1

fuzz() {
    nice -n 10 cargo fuzz "$1" --fuzz-dir fuzz --sanitizer none --release --target-dir "$FUZZ_TARGET_DIR" "${@:2}"
}

if [ -n "$REPLAY" ]; then
    # libFuzzer runs files given as arguments once each and exits.
    RUST_BACKTRACE=1 fuzz run "${TARGETS[0]}" "$REPLAY"
    exit $?
fi

# One build for every target (they share their dependencies).
if ! fuzz build; then
    echo "fuzz targets failed to build" >&2
    exit 1
fi
mkdir -p "$FUZZ_CACHE/logs"
FAILED=()
for t in "${TARGETS[@]}"; do
    mkdir -p "$FUZZ_CACHE/corpus/$t" "$FUZZ_CACHE/artifacts/$t"
    log=$FUZZ_CACHE/logs/$t.log
    echo "==> fuzz $t for ${SECONDS_PER_TARGET}s (log: $log)"
    # The first corpus directory receives new inputs; the checked-in seeds
    # are only read. -timeout: an input running longer is a hang.
    if fuzz run "$t" "$FUZZ_CACHE/corpus/$t" "$ROOT/fuzz/corpus/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$FUZZ_CACHE/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
        grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
    else
        FAILED+=("$t")
        tail -n 60 "$log" >&2
        echo "FAIL: $t; replay with: scripts/fuzz.sh --replay $FUZZ_CACHE/artifacts/$t/<crash-file> $t" >&2
    fi
done
if [ ${#FAILED[@]} -ne 0 ]; then
    echo "fuzz targets failed: ${FAILED[*]}" >&2
    exit 1
fi
echo "fuzz: ${#TARGETS[@]} targets ran ${SECONDS_PER_TARGET}s each without a crash"
