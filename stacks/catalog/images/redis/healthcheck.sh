#!/bin/sh
# Healthy when redis answers PING with PONG on 127.0.0.1:6379. The password, when set, goes
# to redis-cli through REDISCLI_AUTH, never on its command line.
set -eu
if [ -n "${STACKPORT_REDIS_PASSWORD:-}" ]; then
    REDISCLI_AUTH=$STACKPORT_REDIS_PASSWORD
    export REDISCLI_AUTH
fi
[ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]
