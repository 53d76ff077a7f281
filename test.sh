#!/usr/bin/env bash
# Set up (first time only) and run the whole test suite, lint and type checks.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
scripts/install-test-tools.sh
.venv/bin/ruff check bot cogs tests testing bench
# The type check runs beside the tests (it needs one core for ~12 s); either failing fails.
mypy_log="$(mktemp)"
trap 'rm -f "$mypy_log"' EXIT
.venv/bin/mypy >"$mypy_log" 2>&1 &
mypy_pid=$!
status=0
.venv/bin/python -m pytest "$@" || status=$?
wait "$mypy_pid" || status=1
cat "$mypy_log"
exit "$status"
