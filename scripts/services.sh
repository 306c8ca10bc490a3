#!/usr/bin/env bash
# Throwaway PostgreSQL and Redis for the test suite and the benchmark.
#
#   scripts/services.sh COMMAND...   start both, run COMMAND with DATABASE_URL and
#                                    NUDGE_TEST_REDIS_URL set, stop both, exit with its code.
#
# Each run gets its own data directory and free ports on 127.0.0.1, never the system
# cluster; missing Debian packages (postgresql, redis-server, chromium) are installed first.
set -euo pipefail

log() { printf 'services: %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  log "installing Debian packages: $*"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq >/dev/null
  as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

pg_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

[ -n "$(pg_bindir)" ] && [ -x "$(pg_bindir)/initdb" ] || apt_install postgresql
command -v redis-server >/dev/null || apt_install redis-server
# The admin browser tests drive Debian's Chromium (Playwright never downloads a browser here).
[ -x /usr/bin/chromium ] || apt_install chromium
PGBIN=$(pg_bindir)

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

WORK=$(mktemp -d /tmp/nudge-services.XXXXXX)
chmod 755 "$WORK"
PG_PORT=$(free_port)
REDIS_PORT=$(free_port)

# PostgreSQL refuses to run as root: run it as the package's postgres user then.
RUN_AS=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  RUN_AS=(runuser -u postgres --)
  mkdir -p "$WORK/pg" && chown postgres "$WORK/pg"
fi

cleanup() {
  status=$?
  "${RUN_AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/pg/data" -m immediate stop >/dev/null 2>&1 || true
  [ -n "${REDIS_PID:-}" ] && kill "$REDIS_PID" 2>/dev/null || true
  rm -rf "$WORK"
  exit $status
}
trap cleanup EXIT INT TERM

"${RUN_AS[@]}" "$PGBIN/initdb" -D "$WORK/pg/data" -U nudge --auth=trust -E UTF8 --no-locale >"$WORK/initdb.log" 2>&1 \
  || { cat "$WORK/initdb.log" >&2; exit 1; }
"${RUN_AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/server.log" -w -t 60 start -o \
  "-p $PG_PORT -k $WORK/pg -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
   -c full_page_writes=off -c max_connections=300 -c shared_buffers=256MB ${NUDGE_PG_OPTIONS:-}" >/dev/null \
  || { cat "$WORK/pg/server.log" >&2; exit 1; }
"$PGBIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U nudge nudge

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
  --dir "$WORK" >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 50); do
  redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
  sleep 0.1
done

export DATABASE_URL="postgres://nudge@127.0.0.1:$PG_PORT/nudge"
export NUDGE_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
# For a harness that restarts PostgreSQL (make chaos): its data directory, server log,
# binaries, and the command prefix that runs them as its owner (empty when not root).
export NUDGE_PG_DATA="$WORK/pg/data" NUDGE_PG_LOG="$WORK/pg/server.log" NUDGE_PG_BIN="$PGBIN"
export NUDGE_PG_RUN_AS="${RUN_AS[*]}"
log "PostgreSQL on 127.0.0.1:$PG_PORT, Redis on 127.0.0.1:$REDIS_PORT"
set +e
"$@"
