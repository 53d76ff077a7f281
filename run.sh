#!/usr/bin/env bash
# Set up (first time only) and start: the Discord bot when DISCORD_TOKEN is set
# (environment or .env), otherwise the local console against the embedded model.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
exec .venv/bin/python -m bot "${@:-run}"
