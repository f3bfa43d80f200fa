#!/usr/bin/env bash
# A throwaway PostgreSQL server for the end-to-end tier, from Debian's packages.
#   scripts/postgres.sh start PORT DIR   installs PostgreSQL if missing, starts a fresh cluster in
#                                        DIR on 127.0.0.1:PORT and prints its SQLAlchemy URL
#   scripts/postgres.sh stop PORT DIR    stops it and removes DIR
# CI machines have no database; this makes the project bring its own. Python starts it through
# airflow_stack.Postgres, which makes sure the server stops when the Python process dies.
set -euo pipefail
action=${1:?start or stop}
port=${2:?port}
data=${3:?data directory}

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if [ "$action" = stop ]; then
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -d "$data" ] && as_postgres "$bin/pg_ctl" -D "$data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$data"
  exit 0
fi

if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
rm -rf "$data"
mkdir -p "$data"
[ "$(id -u)" = 0 ] && chown postgres "$data"
as_postgres "$bin/initdb" -D "$data" -U airflow --auth=trust -E UTF8 >/dev/null
as_postgres "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w \
  -o "-p $port -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null
"$bin/createdb" -h 127.0.0.1 -p "$port" -U airflow airflow
echo "postgresql+psycopg2://airflow@127.0.0.1:$port/airflow"
