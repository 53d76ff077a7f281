#!/usr/bin/env bash
# System tools some tests need (systemd-analyze verifies the unit files).
# Installs only what is missing, and only where apt-get and root are available.
set -euo pipefail
if ! command -v systemd-analyze >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "Installing systemd (for systemd-analyze verify) ..." >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null) \
            || echo "warning: could not install systemd; the unit-file test will be skipped" >&2
    fi
fi
# PostgreSQL server binaries: the store's tests run against a throwaway cluster too.
"$(dirname "$0")/install-postgres.sh"
