#!/usr/bin/env bash
# Start LocalStack (S3 only) on this machine without Docker, from PyPI, in a
# cached Python 3.13 venv. Prints the environment to use it and waits; Ctrl-C
# stops it. Used by the test suite (scripts/test.sh) as well.
#
#   localstack/run-on-host.sh [PORT]            # default 4566
#   LOCALSTACK_PIDFILE=/tmp/ls.pid localstack/run-on-host.sh 4566 --background
set -euo pipefail
cd "$(dirname "$0")"
port="${1:-4566}"
background="${2:-}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/tributary"
venv="$cache/localstack-venv-$(sha256sum requirements.txt | cut -c1-16)"

# A Python 3.13 that really runs: pyenv's shim answers `command -v python3.13`
# but refuses to run unless 3.13 is a selected version, so every candidate is
# tried, and pyenv's installs are searched directly (PYENV_ROOT or ~/.pyenv).
find_python313() {
    local root="${PYENV_ROOT:-$HOME/.pyenv}" p
    local candidates=()
    if command -v pyenv >/dev/null 2>&1; then
        for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.13(\.[0-9]+)?$'); do
            candidates+=("$(pyenv root)/versions/$v/bin/python3.13")
        done
    fi
    candidates+=("$root"/versions/3.13*/bin/python3.13 /usr/local/bin/python3.13 /usr/bin/python3.13)
    p=$(command -v python3.13 2>/dev/null) && candidates+=("$p")
    for p in "${candidates[@]}"; do
        if [ -x "$p" ] && "$p" -c 'import sys, venv; assert sys.version_info[:2] == (3, 13)' >/dev/null 2>&1; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

if [ ! -f "$venv/.complete" ]; then
    py=$(find_python313) || { echo "LocalStack needs Python 3.13: none runs here (tried pyenv's versions, ${PYENV_ROOT:-$HOME/.pyenv}/versions, /usr/local/bin, /usr/bin, PATH); install one (pyenv install 3.13, or a python3.13 package)"; exit 1; }
    rm -rf "$venv"
    mkdir -p "$cache"
    "$py" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r requirements.txt
    touch "$venv/.complete"
fi

state=$(mktemp -d)
export GATEWAY_SERVER=hypercorn GATEWAY_LISTEN="127.0.0.1:$port" SERVICES=s3 \
    LOCALSTACK_VOLUME_DIR="$state/volume" TMPDIR="$state/tmp" SKIP_INFRA_DOWNLOADS=1
mkdir -p "$TMPDIR"
"$venv/bin/python" -m localstack.runtime.main >"$state/localstack.log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$state"; }
healthy() {
    "$venv/bin/python" -c "import sys, urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/_localstack/health', timeout=1)" >/dev/null 2>&1
}
for _ in $(seq 600); do
    if healthy; then break; fi
    if ! kill -0 "$pid" 2>/dev/null; then cat "$state/localstack.log"; cleanup; exit 1; fi
    sleep 0.1
done
healthy || { tail -20 "$state/localstack.log"; cleanup; exit 1; }
echo "LocalStack S3 on http://127.0.0.1:$port (pid $pid, state in $state)"
echo "export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1"
if [ "$background" = "--background" ]; then
    [ -n "${LOCALSTACK_PIDFILE:-}" ] && echo "$pid $state" >"$LOCALSTACK_PIDFILE"
    exit 0
fi
trap cleanup EXIT INT TERM
wait "$pid"
