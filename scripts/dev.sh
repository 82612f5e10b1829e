#!/usr/bin/env bash
# One entry point for newcomers and CI: creates .venv (once, and again when the pinned
# dependencies change), then runs the demo or the tests. `make demo` / `make test` call it.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
STAMP="$VENV/.installed"

install() {
  if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt requirements/constraints.txt ]; then
    return
  fi
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "flower-exp needs Python >= 3.11 (found: $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
    exit 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV" || {
      echo "could not create $VENV; on Debian/Ubuntu install the venv module: apt-get install python3-venv" >&2
      exit 1
    }
  fi
  echo "installing flower-exp and its pinned dependencies into $VENV (first time: a few minutes, ~2.3 GB)" >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -c requirements/constraints.txt -e '.[cpu,dev,bench]'
  touch "$STAMP"
}

cmd=${1:-}
shift || true
case "$cmd" in
  install) install ;;
  demo)
    install
    # The embedded default: the demo sweep (generates the demo dataset on first use).
    "$VENV/bin/flower-exp" sweep "$@"
    ;;
  test)
    install
    # Seconds: undefined names and the like fail here before a 20-minute test run.
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    "$VENV/bin/python" -m pytest "$@"
    ;;
  *)
    echo "usage: scripts/dev.sh {install|demo|test} [args...]" >&2
    exit 2
    ;;
esac
