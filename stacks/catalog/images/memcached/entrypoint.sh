#!/bin/sh
# Stackport Memcached entry point. Runs as memcache (no root, no capabilities).
# TCP 11211 on all addresses, UDP off; cache memory in MB from STACKPORT_MEMCACHED_MB
# (a whole number 1..65536, default 64, below the container's memory limit), validated
# before it reaches the command line.
set -eu

say() { printf 'stackport-memcached: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" != 0 ] || die "run this image as the memcache user, not root"

mb=${STACKPORT_MEMCACHED_MB:-64}
case $mb in
    '' | 0* | *[!0-9]*) die "STACKPORT_MEMCACHED_MB must be a whole number of megabytes from 1 to 65536" ;;
esac
[ "${#mb}" -le 5 ] && [ "$mb" -le 65536 ] ||
    die "STACKPORT_MEMCACHED_MB must be a whole number of megabytes from 1 to 65536"

# More cache than the container may use would end in the kernel killing memcached.
limit=$(cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || echo max)
case $limit in
    '' | max | *[!0-9]*) ;;
    *) if [ "${#limit}" -le 13 ] && [ "$mb" -gt $((limit / 1048576 - 16)) ]; then
           die "STACKPORT_MEMCACHED_MB=$mb does not fit the container's memory limit of $((limit / 1048576)) MB (16 MB are kept for connections)"
       fi ;;
esac

say "starting with ${mb} MB of cache memory"
exec memcached --listen=0.0.0.0 --port=11211 --udp-port=0 --memory-limit="$mb" \
    --conn-limit=1024 "$@"
