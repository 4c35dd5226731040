#!/bin/sh
# Stackport PostgreSQL entry point. Runs as postgres (no root, no capabilities).
# First start on an empty volume: initdb (scram-sha-256), then the role and database from
# STACKPORT_DB_USER / STACKPORT_DB_NAME with password STACKPORT_DB_PASSWORD. Then the
# server in the foreground. Environment values are data: they reach psql as variables and
# are quoted by psql, never pasted into SQL or evaluated. Secrets are never printed.
set -eu

PGDATA=${PGDATA:-/var/lib/postgresql/data}
RUNDIR=/run/postgresql
MARKER="$PGDATA/.stackport-initialised"
export PGDATA

say() { printf 'stackport-postgres: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

db_user=${STACKPORT_DB_USER:-app}
db_name=${STACKPORT_DB_NAME:-app}

valid_name() {
    # ^[a-z_][a-z0-9_]{0,62}$ in POSIX sh: the first character, the rest, the length.
    case $1 in
        '' | [!a-z_]* | *[!a-z0-9_]*) return 1 ;;
    esac
    [ "${#1}" -le 63 ]
}
valid_name "$db_user" || die "STACKPORT_DB_USER must match ^[a-z_][a-z0-9_]{0,62}\$"
valid_name "$db_name" || die "STACKPORT_DB_NAME must match ^[a-z_][a-z0-9_]{0,62}\$"
case $db_user in
    postgres | pg_* | public | none | current_user | current_role | session_user | system_user)
        die "STACKPORT_DB_USER may not be '$db_user' (reserved by PostgreSQL)" ;;
esac
case $db_name in
    postgres | template0 | template1) die "STACKPORT_DB_NAME may not be '$db_name' (reserved)" ;;
esac
[ -n "${STACKPORT_DB_PASSWORD:-}" ] || die "STACKPORT_DB_PASSWORD is empty; refusing to start without a password"

[ "$(id -u)" != 0 ] || die "run this image as the postgres user, not root"
[ -d "$PGDATA" ] && [ -w "$PGDATA" ] || die "$PGDATA is not a writable directory (mount the data volume there)"
[ -d "$RUNDIR" ] && [ -w "$RUNDIR" ] || die "$RUNDIR is not writable (mount a tmpfs there)"

umask 077

# A password file in the tmpfs for local clients (health checks, probes, docker exec psql):
# the same secret the container already has in its environment, never on a command line.
write_pgpass() {
    case $STACKPORT_DB_PASSWORD in
        *'
'*) rm -f "$PGPASSFILE"; return 0 ;;   # a newline cannot be written to a .pgpass line
    esac
    esc=$(printf '%s' "$STACKPORT_DB_PASSWORD" | sed -e 's/\\/\\\\/g' -e 's/:/\\:/g'; printf x)
    esc=${esc%x}
    tmp="$PGPASSFILE.tmp"
    printf '*:5432:*:%s:%s\n' "$db_user" "$esc" > "$tmp"
    mv -f "$tmp" "$PGPASSFILE"
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -n "$(ls -A "$PGDATA")" ]; then
        die "$PGDATA is not empty but holds no PostgreSQL cluster; refusing to initialise over it"
    fi
    say "initialising a new cluster in $PGDATA (PostgreSQL $PG_MAJOR)"
    initdb --pgdata="$PGDATA" --username=postgres --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=peer --auth-host=scram-sha-256 --no-instructions >/dev/null
    # Password (SCRAM) logins over the network; the postgres superuser has no password, so
    # it logs in only through the socket as the postgres OS user (docker exec).
    cat > "$PGDATA/pg_hba.conf" <<'EOF'
# TYPE  DATABASE  USER      ADDRESS     METHOD
local   all       postgres              peer
local   all       all                   scram-sha-256
host    all       all       0.0.0.0/0   scram-sha-256
host    all       all       ::/0        scram-sha-256
EOF
fi

if [ ! -e "$MARKER" ]; then
    say "creating role and database"
    # Socket only, and statements are never logged (they carry the password).
    pg_ctl --pgdata="$PGDATA" --wait --silent --log=/tmp/stackport-init.log \
        -o "-c listen_addresses= -c unix_socket_directories=$RUNDIR -c log_min_error_statement=panic -c log_statement=none" \
        start || { cat /tmp/stackport-init.log >&2; die "the temporary server did not start"; }
    # psql reads the password from the environment (\getenv) and quotes every value itself.
    # Only its ERROR lines are shown: a "LINE 1: ..." context could quote the statement.
    if ! err=$(psql --no-psqlrc --quiet --set=ON_ERROR_STOP=1 --host="$RUNDIR" --username=postgres \
        --dbname=postgres --set=dbuser="$db_user" --set=dbname="$db_name" 2>&1 >/dev/null <<'SQL'
\getenv dbpass STACKPORT_DB_PASSWORD
SET password_encryption = 'scram-sha-256';
SELECT NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'dbuser') AS need_role \gset
\if :need_role
CREATE ROLE :"dbuser" LOGIN PASSWORD :'dbpass';
\else
ALTER ROLE :"dbuser" LOGIN PASSWORD :'dbpass';
\endif
SELECT NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'dbname') AS need_db \gset
\if :need_db
CREATE DATABASE :"dbname" OWNER :"dbuser";
\endif
SQL
    ); then
        printf '%s\n' "$err" | grep -E '(ERROR|FATAL):' | head -n 3 >&2 || true
        pg_ctl --pgdata="$PGDATA" --wait --silent --mode=fast stop || true
        die "creating the role and database failed"
    fi
    pg_ctl --pgdata="$PGDATA" --wait --silent --mode=fast stop
    rm -f /tmp/stackport-init.log
    : > "$MARKER"
    say "role and database ready"
fi

write_pgpass

exec postgres -D "$PGDATA" \
    -c listen_addresses=0.0.0.0 \
    -c port=5432 \
    -c unix_socket_directories="$RUNDIR" \
    -c password_encryption=scram-sha-256 \
    -c jit=off \
    "$@"
