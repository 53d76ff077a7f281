#!/usr/bin/env bash
# Set up (first time only) and run the whole test suite, lint and type checks.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
scripts/install-test-tools.sh
.venv/bin/ruff check bot cogs tests testing bench
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
