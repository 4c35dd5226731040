#!/bin/sh
# Stackport MariaDB entry point. Runs as mysql (no root, no capabilities).
# First start on an empty volume: mariadb-install-db (root and mysql only through the unix
# socket, as those OS users), then the database and user from STACKPORT_DB_NAME /
# STACKPORT_DB_USER with password STACKPORT_DB_PASSWORD. A data directory written by an
# older major is upgraded in place (mariadb-upgrade). Then the server in the foreground.
# Names are validated; the password reaches SQL only hex-encoded (X'..'), so no value is
# ever pasted into SQL text; secrets are never printed.
set -eu

DATADIR=/var/lib/mysql
RUNDIR=/run/mysqld
INIT_SOCKET=$RUNDIR/init.sock
MARKER="$DATADIR/.stackport-initialised"
HEALTH_CNF="$DATADIR/.stackport-healthcheck.cnf"

say() { printf 'stackport-mariadb: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

db_user=${STACKPORT_DB_USER:-app}
db_name=${STACKPORT_DB_NAME:-app}

valid_name() {
    # ^[a-z_][a-z0-9_]{0,62}$ in POSIX sh
    case $1 in
        '' | [!a-z_]* | *[!a-z0-9_]*) return 1 ;;
    esac
    [ "${#1}" -le 63 ]
}
valid_name "$db_user" || die "STACKPORT_DB_USER must match ^[a-z_][a-z0-9_]{0,62}\$"
valid_name "$db_name" || die "STACKPORT_DB_NAME must match ^[a-z_][a-z0-9_]{0,62}\$"
[ "${#db_user}" -le 32 ] || die "STACKPORT_DB_USER is longer than MariaDB's 32 characters"
case $db_user in
    root | mysql | mariadb.sys | healthcheck) die "STACKPORT_DB_USER may not be '$db_user' (reserved)" ;;
esac
case $db_name in
    mysql | information_schema | performance_schema | sys) die "STACKPORT_DB_NAME may not be '$db_name' (reserved)" ;;
esac
[ -n "${STACKPORT_DB_PASSWORD:-}" ] || die "STACKPORT_DB_PASSWORD is empty; refusing to start without a password"

[ "$(id -u)" != 0 ] || die "run this image as the mysql user, not root"
[ -d "$DATADIR" ] && [ -w "$DATADIR" ] || die "$DATADIR is not a writable directory (mount the data volume there)"
[ -d "$RUNDIR" ] && [ -w "$RUNDIR" ] || die "$RUNDIR is not writable (mount a tmpfs there)"
[ -w /tmp ] || die "/tmp is not writable (mount a tmpfs there)"

umask 077

# InnoDB's buffer pool from the container's memory limit: a quarter, 32 MB to 1 GB.
mem_args=
limit=$(cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || echo max)
case $limit in
    '' | max | *[!0-9]*) ;;
    *)
        if [ "${#limit}" -le 13 ]; then     # no limit shows as a huge number on cgroup v1
            pool=$((limit / 4 / 1048576))
            [ "$pool" -ge 32 ] || pool=32
            [ "$pool" -le 1024 ] || pool=1024
            mem_args="--innodb-buffer-pool-size=${pool}M"
        fi ;;
esac

temp_pid=
start_temp() {
    # Socket only (no network), its own socket, so the health check stays red meanwhile.
    mariadbd --skip-networking --socket="$INIT_SOCKET" --pid-file="$RUNDIR/init.pid" \
        --skip-log-bin $mem_args "$@" &
    temp_pid=$!
    i=0
    until mariadb --protocol=socket --socket="$INIT_SOCKET" --user=mysql --connect-timeout=1 \
            --execute='SELECT 1' >/dev/null 2>&1; do
        kill -0 "$temp_pid" 2>/dev/null || die "the temporary server exited"
        i=$((i + 1))
        [ "$i" -lt 120 ] || die "the temporary server did not start within 60 s"
        sleep 0.5
    done
}
stop_temp() {
    mariadb --protocol=socket --socket="$INIT_SOCKET" --user=mysql --execute='SHUTDOWN' >/dev/null 2>&1 ||
        kill "$temp_pid" 2>/dev/null || true
    wait "$temp_pid" || true
    temp_pid=
}

if [ ! -d "$DATADIR/mysql" ]; then
    if [ -n "$(ls -A "$DATADIR")" ]; then
        die "$DATADIR is not empty but holds no MariaDB data directory; refusing to initialise over it"
    fi
    say "initialising a new data directory in $DATADIR"
    # root@localhost and mysql@localhost: unix_socket only (OS user root / mysql), no password.
    mariadb-install-db --datadir="$DATADIR" --user=mysql --auth-root-authentication-method=socket \
        --auth-root-socket-user=mysql --skip-test-db --skip-name-resolve --skip-log-bin \
        >/dev/null || die "mariadb-install-db failed"
fi

# The SQL that creates the database and user. Names are validated above; the password goes
# in only as a hex literal and is stored as its mysql_native_password hash (41 characters of
# [*0-9A-F], the only value that reaches the prepared statement's text). The health check
# logs in over TCP as healthcheck@127.0.0.1 (no privileges) with a random password kept in
# the data volume (mode 0600): unlike an anonymous probe, that leaves no "Access denied" or
# "Aborted connection" warning in the log every 5 seconds.
init_sql() {
    pw_hex=$(printf '%s' "$STACKPORT_DB_PASSWORD" | od -An -v -tx1 | tr -d ' \n')
    cat <<SQL
SET SESSION sql_log_bin = 0;
DELETE FROM mysql.global_priv WHERE User = '';
DELETE FROM mysql.proxies_priv WHERE Host <> 'localhost';
FLUSH PRIVILEGES;
CREATE DATABASE IF NOT EXISTS \`$db_name\`;
CREATE USER IF NOT EXISTS '$db_user'@'%';
SET @stackport_sql = CONCAT('ALTER USER ''$db_user''@''%'' IDENTIFIED BY PASSWORD ''', PASSWORD(X'$pw_hex'), '''');
PREPARE stackport_stmt FROM @stackport_sql;
EXECUTE stackport_stmt;
DEALLOCATE PREPARE stackport_stmt;
SET @stackport_sql = NULL;
GRANT ALL PRIVILEGES ON \`$db_name\`.* TO '$db_user'@'%';
CREATE USER IF NOT EXISTS 'healthcheck'@'127.0.0.1';
ALTER USER 'healthcheck'@'127.0.0.1' IDENTIFIED BY '$health_pw';
FLUSH PRIVILEGES;
SQL
}

if [ ! -e "$MARKER" ] || [ ! -s "$HEALTH_CNF" ]; then
    say "creating database and user"
    health_pw=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    printf '[client]\nuser=healthcheck\npassword=%s\n' "$health_pw" > "$HEALTH_CNF.tmp"
    start_temp
    # The client echoes a failing statement (it holds the hex password): show the error code only.
    if ! err=$(init_sql | mariadb --protocol=socket --socket="$INIT_SOCKET" --user=mysql --batch 2>&1 >/dev/null); then
        stop_temp
        say "$(printf '%s\n' "$err" | sed -n 's/^\(ERROR [0-9]* ([0-9A-Z]*)\).*/\1/p' | head -n 1)"
        die "creating the database and user failed"
    fi
    stop_temp
    mv -f "$HEALTH_CNF.tmp" "$HEALTH_CNF"
    : > "$MARKER"
    say "database and user ready"
fi

# In-place upgrade of a data directory last written by another major.minor (10.11 -> 11.8).
server_version=$(mariadbd --version | sed -n 's/.* Ver \([0-9]*\.[0-9]*\)\..*/\1/p')
data_version=$(cat "$DATADIR/mariadb_upgrade_info" "$DATADIR/mysql_upgrade_info" 2>/dev/null | head -n 1 |
    sed -n 's/^\([0-9]*\.[0-9]*\)\..*/\1/p')
newer() {   # newer A B: is major.minor A later than B?
    [ "${1%%.*}" -gt "${2%%.*}" ] || { [ "${1%%.*}" -eq "${2%%.*}" ] && [ "${1#*.}" -gt "${2#*.}" ]; }
}
if [ -n "$data_version" ] && newer "$data_version" "$server_version"; then
    die "the data directory was written by MariaDB $data_version, newer than this server ($server_version); refusing to downgrade"
fi
if [ "$data_version" != "$server_version" ]; then
    say "upgrading the data directory (${data_version:-unknown} -> $server_version) with mariadb-upgrade"
    start_temp
    mariadb-upgrade --protocol=socket --socket="$INIT_SOCKET" --user=mysql --silent >/dev/null ||
        { stop_temp; die "mariadb-upgrade failed"; }
    stop_temp
fi

exec mariadbd $mem_args "$@"
