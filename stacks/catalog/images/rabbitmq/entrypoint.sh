#!/bin/sh
# Stackport RabbitMQ entry point. Runs as rabbitmq (no root, no capabilities).
# Writes /run/rabbitmq/advanced.config (tmpfs, mode 0600) at every start: the default user,
# password and vhost from STACKPORT_AMQP_USER / STACKPORT_AMQP_PASSWORD / STACKPORT_AMQP_VHOST
# (RabbitMQ creates them on the node's first boot, instead of guest/guest), and the
# container's memory limit. Values go in as Erlang binaries written as lists of byte
# values (<<97,112,112>>): nothing from the environment is parsed as Erlang text.
set -eu

DATA=/var/lib/rabbitmq
CONF=/run/rabbitmq/advanced.config

say() { printf 'stackport-rabbitmq: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

amqp_user=${STACKPORT_AMQP_USER:-app}
amqp_vhost=${STACKPORT_AMQP_VHOST:-app}

valid_name() {
    # ^[a-z_][a-z0-9_]{0,62}$ in POSIX sh
    case $1 in
        '' | [!a-z_]* | *[!a-z0-9_]*) return 1 ;;
    esac
    [ "${#1}" -le 63 ]
}
valid_name "$amqp_user" || die "STACKPORT_AMQP_USER must match ^[a-z_][a-z0-9_]{0,62}\$"
valid_name "$amqp_vhost" || die "STACKPORT_AMQP_VHOST must match ^[a-z_][a-z0-9_]{0,62}\$"
[ "$amqp_user" != guest ] || die "STACKPORT_AMQP_USER may not be 'guest'"
[ -n "${STACKPORT_AMQP_PASSWORD:-}" ] || die "STACKPORT_AMQP_PASSWORD is empty; refusing to start without a password"

[ "$(id -u)" != 0 ] || die "run this image as the rabbitmq user, not root"
[ -d "$DATA" ] && [ -w "$DATA" ] || die "$DATA is not a writable directory (mount the data volume there)"
[ -d /run/rabbitmq ] && [ -w /run/rabbitmq ] || die "/run/rabbitmq is not writable (mount a tmpfs there)"
[ -w /tmp ] || die "/tmp is not writable (mount a tmpfs there)"

umask 077
mkdir -p /tmp/rabbitmq-log

# One Erlang cookie per volume, made here (the CLI tools read it from $HOME too).
if [ ! -s "$DATA/.erlang.cookie" ]; then
    od -An -N24 -tx1 /dev/urandom | tr -d ' \n' | tr 'a-f' 'A-F' > "$DATA/.erlang.cookie.tmp"
    chmod 400 "$DATA/.erlang.cookie.tmp"
    mv -f "$DATA/.erlang.cookie.tmp" "$DATA/.erlang.cookie"
fi

binary() {   # the bytes of $1 as an Erlang binary: <<104,105>>
    printf '<<'
    printf '%s' "$1" | od -An -v -tu1 | tr -s ' \n' ',,' | sed 's/^,//; s/,$//'
    printf '>>'
}

mem=
limit=$(cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || echo max)
case $limit in
    '' | max | *[!0-9]*) ;;
    *) [ "${#limit}" -gt 13 ] || mem=",
   {total_memory_available_override_value, $limit}" ;;
esac

cat > "$CONF.tmp" <<CONFIG
[
 {rabbit, [
   {default_user, $(binary "$amqp_user")},
   {default_pass, $(binary "$STACKPORT_AMQP_PASSWORD")},
   {default_vhost, $(binary "$amqp_vhost")},
   {default_permissions, [<<".*">>, <<".*">>, <<".*">>]},
   {default_user_tags, []}$mem
 ]}
].
CONFIG
mv -f "$CONF.tmp" "$CONF"

if [ ! -d "$DATA/mnesia" ]; then
    say "first start: RabbitMQ creates user '$amqp_user' and vhost '$amqp_vhost' (no guest user)"
fi

exec rabbitmq-server "$@"
