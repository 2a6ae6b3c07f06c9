#!/usr/bin/env bash
# Deterministic simulation of brokers' write, commit, fetch and maintenance
# paths (crates/sim). Every seed is one reproducible run; a failing seed is
# printed with the command that replays it.
#
#   scripts/simulate.sh                      1000 seeds (0..999), every core
#   scripts/simulate.sh --seeds 20000        more
#   scripts/simulate.sh --seeds 5000 --first 100000   another range
#   scripts/simulate.sh --seed 42            replay one seed, printing its trace
#   scripts/simulate.sh --seed 42 --check-determinism   ... and run it twice
#   scripts/simulate.sh --seed 1 --no-commit-deadline   defect 1 with its fix off
#
# Other flags: --jobs N (worker threads), --check-determinism (run every
# seed twice, fail if the traces differ). Built with --release: a seed
# takes a few milliseconds there.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}
cargo build --release --quiet -p tributary-sim
exec "$CARGO_TARGET_DIR/release/tributary-sim" "$@"
