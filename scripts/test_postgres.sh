#!/usr/bin/env bash
# A throwaway PostgreSQL server for the index tests, listening on a Unix socket only (no TCP port).
#   url=$(bash scripts/test_postgres.sh start DIR)   # prints the SQLAlchemy URL of database cxr_test
#   bash scripts/test_postgres.sh stop DIR
# Uses Debian's postgresql package (/usr/lib/postgresql/<version>/bin). PostgreSQL refuses to run as
# root, so as root the server runs as the `postgres` user, which owns DIR.
set -euo pipefail
action=${1:?usage: test_postgres.sh start|stop DIR}
dir=${2:?usage: test_postgres.sh start|stop DIR}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$bin" ]; then
  echo "no PostgreSQL server binaries in /usr/lib/postgresql (apt-get install postgresql)" >&2
  exit 1
fi
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
case "$action" in
  start)
    if [ -f "$dir/data/postmaster.pid" ] && as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
      as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    fi
    rm -rf "$dir"
    mkdir -p "$dir/socket"
    if [ "$(id -u)" = 0 ]; then chown -R postgres: "$dir"; fi
    as_owner "$bin/initdb" -D "$dir/data" -A trust -U postgres --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
    # listen_addresses='' : no TCP at all; fsync off: test data, speed over durability.
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses='' -k $dir/socket -c fsync=off -c full_page_writes=off" start >/dev/null \
      || { cat "$dir/server.log" >&2; exit 1; }
    as_owner "$bin/createdb" -h "$dir/socket" -U postgres cxr_test
    echo "postgresql+psycopg://postgres@/cxr_test?host=$dir/socket"
    ;;
  stop)
    if [ -d "$dir/data" ]; then as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true; fi
    rm -rf "$dir"
    ;;
  *)
    echo "usage: test_postgres.sh start|stop DIR" >&2
    exit 2
    ;;
esac
