#!/bin/sh
# Stackport PHP-FPM entry point. Settings:
#   STACKPORT_FPM_MAX_CHILDREN  most PHP worker processes (1-256, default 5)
set -eu

die() {
    printf 'stackport-php-fpm: %s\n' "$*" >&2
    exit 64
}

nl='
'
max=${STACKPORT_FPM_MAX_CHILDREN:-5}
case $max in
    "" | *"$nl"* | *[!0-9]* | 0*) die "STACKPORT_FPM_MAX_CHILDREN must be a number from 1 to 256; refusing to start" ;;
esac
[ "${#max}" -le 3 ] && [ "$max" -le 256 ] \
    || die "STACKPORT_FPM_MAX_CHILDREN must be a number from 1 to 256; refusing to start"
export STACKPORT_FPM_MAX_CHILDREN="$max"

mkdir -p /tmp/php-sessions 2>/dev/null && [ -w /tmp/php-sessions ] \
    || die "/tmp is not writable: run with a tmpfs on /tmp (read-only root)"
chmod 700 /tmp/php-sessions

if [ -z "$(ls -A /srv/app 2>/dev/null)" ]; then
    echo "stackport-php-fpm: /srv/app is empty; the sample app is /usr/share/stackport/sample/index.php" >&2
fi

exec php-fpm --nodaemonize --fpm-config /etc/stackport/php-fpm.conf
