#!/usr/bin/env bash
# Install (Debian) and start a throwaway PostgreSQL on loopback for the PostgreSQL tests; prints its URL.
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
data=${PGTEST_DIR:-/tmp/voiceforge-pg}
port=${PGTEST_PORT:-54329}

fresh_cluster() {
  rm -rf "$data" && mkdir -p "$data" && chown postgres "$data"
  su postgres -c "$bin/initdb -D $data -A trust -U postgres" >/dev/null
}
start() {
  su postgres -c "$bin/pg_ctl -D $data -o '-p $port -k /tmp -c listen_addresses=127.0.0.1' -l $data/log -w start" >&2
}

ready() { "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; }

[ -f "$data/PG_VERSION" ] || fresh_cluster
if ! ready; then
  # Whatever is left of an earlier run (half-stopped, stale pid file) goes; it holds nothing to keep.
  su postgres -c "$bin/pg_ctl -D $data -m immediate stop" >/dev/null 2>&1 || true
  start || { fresh_cluster && start; }
fi
echo "postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
