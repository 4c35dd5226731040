#!/bin/sh
# Stackport nginx entry point. Renders /tmp/nginx/{main,http,server}.conf and starts nginx
# in the foreground. Settings (all optional):
#   STACKPORT_FASTCGI_UPSTREAM  host:port of PHP-FPM (e.g. php:9000): *.php goes there
#   STACKPORT_HTTP_UPSTREAM     host:port of an HTTP runtime (e.g. app:8000): files under
#                               /srv/app/public are served, everything else is proxied there
# Values are checked against a strict host:port pattern before anything is written; an
# invalid value stops the container with a message (the value itself is not echoed).
set -eu

die() {
    printf 'stackport-nginx: %s\n' "$*" >&2
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
http=${STACKPORT_HTTP_UPSTREAM:-}
if [ -n "$fastcgi" ] && ! valid_upstream "$fastcgi"; then
    die "STACKPORT_FASTCGI_UPSTREAM must be host:port (for example php:9000); refusing to start"
fi
if [ -n "$http" ] && ! valid_upstream "$http"; then
    die "STACKPORT_HTTP_UPSTREAM must be host:port (for example app:8000); refusing to start"
fi

conf=/tmp/nginx
mkdir -p "$conf" 2>/dev/null && [ -w "$conf" ] \
    || die "/tmp is not writable: run with a tmpfs on /tmp (read-only root)"

# Upstream names are resolved at request time through the container's DNS server, so a
# replaced PHP-FPM or runtime container (new address) is found without restarting nginx.
# Without a usable IPv4 nameserver, fall back to upstream blocks resolved at start.
nameserver=$(sed -n 's/^nameserver[[:space:]][[:space:]]*\([0-9][0-9.]*\)[[:space:]]*$/\1/p' /etc/resolv.conf 2>/dev/null | head -n 1)
printf '%s\n' "$nameserver" | grep -Eqx '([0-9]{1,3}\.){3}[0-9]{1,3}' || nameserver=

# Workers: one per CPU, at most 4 (containers see all of the host's CPUs).
workers=$(nproc 2>/dev/null || echo 1)
case $workers in "" | *[!0-9]*) workers=1 ;; esac
[ "$workers" -ge 1 ] || workers=1
[ "$workers" -le 4 ] || workers=4
printf 'worker_processes %s;\n' "$workers" > "$conf/main.conf"

: > "$conf/http.conf"
if [ -n "$fastcgi$http" ]; then
    if [ -n "$nameserver" ]; then
        printf 'resolver %s valid=10s ipv6=off;\nresolver_timeout 5s;\n' "$nameserver" >> "$conf/http.conf"
    else
        [ -z "$fastcgi" ] || printf 'upstream stackport_fastcgi { server %s; }\n' "$fastcgi" >> "$conf/http.conf"
        [ -z "$http" ] || printf 'upstream stackport_http { server %s; }\n' "$http" >> "$conf/http.conf"
    fi
fi

# Document root: /srv/app, or the built-in sample when /srv/app is empty. In front of an
# HTTP runtime only /srv/app/public is served from disk (the usual place for collected
# static files; the rest of /srv/app is the application's source and settings, never
# served), everything else goes to the runtime, which serves its own sample.
sample=/usr/share/stackport/sample
root=/srv/app
if [ -n "$http" ] && [ -z "$fastcgi" ]; then
    root=/srv/app/public
elif [ -z "$(ls -A /srv/app 2>/dev/null)" ]; then
    root=$sample
    echo "stackport-nginx: /srv/app is empty, serving the built-in sample" >&2
fi

{
    printf 'root %s;\n' "$root"
    [ "$root" != "$sample" ] || printf 'ssi on;\n'
    if [ -n "$fastcgi" ]; then
        if [ -n "$nameserver" ]; then
            printf 'set $stackport_fastcgi %s;\n' "$fastcgi"
        else
            printf 'set $stackport_fastcgi stackport_fastcgi;\n'
        fi
    fi
    if [ -n "$http" ]; then
        if [ -n "$nameserver" ]; then
            printf 'set $stackport_http %s;\n' "$http"
        else
            printf 'set $stackport_http stackport_http;\n'
        fi
    fi
    if [ -n "$fastcgi" ] && [ -n "$http" ]; then
        printf 'include /etc/nginx/stackport/%s;\n' fastcgi-php.conf http-front.conf
    elif [ -n "$fastcgi" ]; then
        printf 'include /etc/nginx/stackport/%s;\n' fastcgi-php.conf fastcgi-front.conf
    elif [ -n "$http" ]; then
        printf 'include /etc/nginx/stackport/%s;\n' http-php.conf http-front.conf
    else
        printf 'include /etc/nginx/stackport/%s;\n' static.conf
    fi
} > "$conf/server.conf"

exec nginx -e stderr -c /etc/nginx/stackport/nginx.conf
