#!/usr/bin/env bash
# PostgreSQL server binaries for the store's tests (testing/postgres.py starts a
# throwaway cluster from them; nothing here starts a server). Installs Debian's
# `postgresql` package only when initdb is missing, and only as root with apt-get;
# otherwise says what the tests will do. No cluster is created and no service is
# started: the tests own the only server they use.
set -euo pipefail

have_initdb() {
    command -v initdb >/dev/null 2>&1 && return 0
    for dir in /usr/lib/postgresql/*/bin; do
        [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ] && return 0
    done
    return 1
}

if have_initdb; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "warning: no PostgreSQL server binaries and no root/apt-get to install them;" \
         "the PostgreSQL store tests will be skipped (they fail when CI is set)." >&2
    exit 0
fi
echo "Installing PostgreSQL (for the store's PostgreSQL tests) ..." >&2
# No main cluster, and no service started by the package's scripts.
mkdir -p /etc/postgresql-common
if [ ! -f /etc/postgresql-common/createcluster.conf ]; then
    echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
fi
policy=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    added_policy=1
fi
status=0
(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends postgresql >/dev/null) || status=$?
if [ "$added_policy" = 1 ]; then
    rm -f "$policy"
fi
if [ "$status" != 0 ] || ! have_initdb; then
    echo "warning: could not install PostgreSQL; its store tests will be skipped" \
         "(they fail when CI is set)." >&2
fi
