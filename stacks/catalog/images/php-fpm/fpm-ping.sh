#!/bin/sh
# Health check: FPM's ping page over FastCGI (Debian's libfcgi-bin), expects "pong".
set -eu
out=$(SCRIPT_NAME=/ping SCRIPT_FILENAME=/ping REQUEST_METHOD=GET QUERY_STRING= \
      cgi-fcgi -bind -connect 127.0.0.1:9000 2>&1) || { echo "unhealthy: FPM does not answer" >&2; exit 1; }
case $out in
    *pong*) exit 0 ;;
esac
echo "unhealthy: unexpected ping answer" >&2
exit 1
