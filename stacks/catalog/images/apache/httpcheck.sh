#!/bin/bash
# Health check without an HTTP client package (bash's /dev/tcp):
#   stackport-httpcheck PORT PATH    -> exit 0 when 127.0.0.1:PORT answers PATH with 200.
set -u
port=${1:?usage: stackport-httpcheck PORT PATH}
path=${2:-/}
exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
printf 'GET %s HTTP/1.0\r\nHost: localhost\r\nUser-Agent: stackport-healthcheck\r\n\r\n' "$path" >&3
IFS= read -r -t 2 status <&3 || { echo "unhealthy: no answer on port $port" >&2; exit 1; }
status=${status%$'\r'}
case $status in
  "HTTP/1."[01]" 200"|"HTTP/1."[01]" 200 "*) exit 0 ;;
esac
echo "unhealthy: $status" >&2
exit 1
