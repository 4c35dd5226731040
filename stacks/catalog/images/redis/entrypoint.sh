#!/bin/sh
# Stackport Redis entry point. Runs as redis (no root, no capabilities).
# Writes /run/redis/redis.conf (tmpfs, mode 0600) at every start: the image's settings plus
# requirepass from STACKPORT_REDIS_PASSWORD when it is set (so the password never shows on
# a command line or in `ps`) and maxmemory from the container's memory limit. The password
# is written byte by byte as \xHH escapes inside a quoted string: no value can end the
# string or add a directive. Secrets are never printed.
set -eu

CONF=/run/redis/redis.conf

say() { printf 'stackport-redis: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" != 0 ] || die "run this image as the redis user, not root"
[ -d /data ] && [ -w /data ] || die "/data is not a writable directory (mount the data volume there)"
[ -d /run/redis ] && [ -w /run/redis ] || die "/run/redis is not writable (mount a tmpfs there)"

umask 077

{
    echo 'include /etc/redis/stackport.conf'
    if [ -n "${STACKPORT_REDIS_PASSWORD:-}" ]; then
        printf 'requirepass "'
        printf '%s' "$STACKPORT_REDIS_PASSWORD" | od -An -v -tx1 | tr -d ' \n' | sed 's/../\\x&/g'
        printf '"\n'
    fi
    # Half of the memory limit, so a fork for RDB/AOF rewrites still fits; writes fail
    # (noeviction) instead of the kernel killing the server when the data outgrows it.
    limit=$(cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || echo max)
    case $limit in
        '' | max | *[!0-9]*) ;;
        *) if [ "${#limit}" -le 13 ]; then          # "no limit" is a huge number on cgroup v1
               printf 'maxmemory %s\nmaxmemory-policy noeviction\n' "$((limit / 2))"
           fi ;;
    esac
} > "$CONF.tmp"
mv -f "$CONF.tmp" "$CONF"

if [ -n "${STACKPORT_REDIS_PASSWORD:-}" ]; then
    say "starting with a password (requirepass)"
else
    say "starting without a password: reachable by every container of this project"
fi

exec redis-server "$CONF" "$@"
