#!/usr/bin/env bash
# One entry point for set-up and the everyday commands. Creates (or reuses) .venv by itself.
#   ./dev.sh demo        the main job: the whole pipeline on the bundled tiny model
#   ./dev.sh test        every test suite, with the coverage gate
#   ./dev.sh lint        ruff
#   ./dev.sh bench       the benchmark table (add --quick for a short run)
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=.venv
STAMP="$VENV/.mi-crow-installed"
want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
    echo "$want" > "$STAMP"
  fi
  # The dashboard page test drives Debian's Chromium with Playwright (never a downloaded browser build).
  if [ ! -x /usr/bin/chromium ] && ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "dev.sh: installing Debian's chromium for the dashboard browser test"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
      echo "dev.sh: no Chromium found, so tests/e2e/test_dashboard_html.py will be skipped." >&2
      echo "        Install it as root: apt-get install -y chromium (or set MI_CROW_CHROMIUM=/path/to/chrome)." >&2
    fi
  fi
  # The Node.js example client (exercised by the tests): its packages, pinned by package-lock.json.
  if command -v npm >/dev/null 2>&1 && [ ! -d examples/clients/node/node_modules/@grpc/grpc-js ]; then
    (cd examples/clients/node && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

# Services, workers and tests share two cores: no OpenMP spin-waiting.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}

cmd=${1:-help}
shift || true
case "$cmd" in
  demo)  setup; exec "$VENV/bin/mi-crow" demo "$@" ;;
  test)  setup; exec "$VENV/bin/python" -m pytest --cov=mi_crow --cov-report=term --cov-report=xml "$@" ;;
  lint)  setup; "$VENV/bin/ruff" check . && "$VENV/bin/ruff" format --check . ;;
  bench) setup; exec "$VENV/bin/python" -m benchmarks.run "$@" ;;
  setup) setup ;;
  *) sed -n '2,7p' "$0"; exit 2 ;;
esac
