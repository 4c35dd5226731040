#!/bin/sh
# Stackport Apache httpd entry point. Renders /tmp/apache2/stackport.conf and starts httpd
# in the foreground. Settings (optional):
#   STACKPORT_FASTCGI_UPSTREAM  host:port of PHP-FPM (e.g. php:9000): *.php goes there
# The value is checked against a strict host:port pattern before anything is written; an
# invalid value stops the container with a message (the value itself is not echoed).
set -eu

die() {
    printf 'stackport-apache: %s\n' "$*" >&2
    exit 64
}

nl='
'
# host: DNS labels (letters, digits, '-', '_' as in container names; not at either end of a
# label) separated by dots, or an IPv4 address; port: 1-65535.
valid_upstream() {
    case $1 in
        "" | *"$nl"* | *[!A-Za-z0-9._:-]*) return 1 ;;
    esac
    [ "${#1}" -le 259 ] || return 1
    printf '%s\n' "$1" | grep -Eqx \
        '[A-Za-z0-9]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*:[1-9][0-9]{0,4}' \
        || return 1
    [ "${1##*:}" -le 65535 ]
}

fastcgi=${STACKPORT_FASTCGI_UPSTREAM:-}
if [ -n "$fastcgi" ] && ! valid_upstream "$fastcgi"; then
    die "STACKPORT_FASTCGI_UPSTREAM must be host:port (for example php:9000); refusing to start"
fi

conf=/tmp/apache2
mkdir -p "$conf" 2>/dev/null && [ -w "$conf" ] \
    || die "/tmp is not writable: run with a tmpfs on /tmp (read-only root)"

# Document root: /srv/app, or the built-in sample when /srv/app is empty.
root=/srv/app
if [ -z "$(ls -A /srv/app 2>/dev/null)" ]; then
    root=/usr/share/stackport/sample
    echo "stackport-apache: /srv/app is empty, serving the built-in sample" >&2
fi

{
    printf 'Define STACKPORT_DOCROOT %s\n' "$root"
    [ -z "$fastcgi" ] || printf 'Define STACKPORT_FASTCGI %s\n' "$fastcgi"
    printf 'Include /etc/apache2/stackport/mode-static.conf\n'
    [ -z "$fastcgi" ] || printf 'Include /etc/apache2/stackport/mode-fastcgi.conf\n'
} > "$conf/stackport.conf"

exec apache2 -f /etc/apache2/stackport/httpd.conf -DFOREGROUND
