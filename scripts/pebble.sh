#!/usr/bin/env bash
# Pebble (Debian's `pebble`, Let's Encrypt's ACME test server) on loopback, in the foreground:
# the ACME directory of `make run` and of the HTTPS tests, never a public CA. Pebble validates a
# challenge by connecting to the name itself: it resolves names through STACKPORT_PEBBLE_DNS
# (a DNS server that points the demo's names at 127.0.0.1) and connects to the edge's HTTP and
# HTTPS ports. Its root changes at every start (get it from the management API, /roots/0).
#   STACKPORT_PEBBLE_DIR=var/pebble STACKPORT_PEBBLE_LISTEN=127.0.0.1:14000 \
#   STACKPORT_PEBBLE_MANAGEMENT=127.0.0.1:15000 STACKPORT_PEBBLE_HTTP_PORT=8080 \
#   STACKPORT_PEBBLE_TLS_PORT=8443 STACKPORT_PEBBLE_DNS=127.0.0.1:15353 scripts/pebble.sh
# The directory is then https://<listen>/dir; its TLS certificate, made here once, is
# $STACKPORT_PEBBLE_DIR/cert.pem (the edge trusts it: STACKPORT_ACME_CA_ROOT).
set -euo pipefail
DIR=${STACKPORT_PEBBLE_DIR:-var/pebble}
LISTEN=${STACKPORT_PEBBLE_LISTEN:-127.0.0.1:14000}
MANAGEMENT=${STACKPORT_PEBBLE_MANAGEMENT:-127.0.0.1:15000}
HTTP_PORT=${STACKPORT_PEBBLE_HTTP_PORT:-8080}
TLS_PORT=${STACKPORT_PEBBLE_TLS_PORT:-8443}
DNS=${STACKPORT_PEBBLE_DNS:-}

for addr in "$LISTEN" "$MANAGEMENT" ${DNS:+"$DNS"}; do
  if ! [[ $addr =~ ^127\.[0-9.]+:[0-9]{1,5}$ ]]; then
    echo "error: '$addr' must be a loopback ip:port (pebble is a test CA)" >&2
    exit 2
  fi
done
for port in "$HTTP_PORT" "$TLS_PORT"; do
  if ! [[ $port =~ ^[0-9]{1,5}$ ]]; then
    echo "error: invalid port '$port'" >&2
    exit 2
  fi
done

if ! command -v pebble >/dev/null 2>&1; then
  echo "installing pebble"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends pebble
fi

mkdir -p "$DIR"
chmod 700 "$DIR"
# Pebble serves its directory over HTTPS only: a self-signed certificate for loopback.
if [ ! -s "$DIR/cert.pem" ] || [ ! -s "$DIR/key.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -keyout "$DIR/key.pem" -out "$DIR/cert.pem" -subj "/CN=Stackport test ACME directory" \
    -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" 2>/dev/null
fi
cat >"$DIR/pebble-config.json" <<JSON
{
  "pebble": {
    "listenAddress": "$LISTEN",
    "managementListenAddress": "$MANAGEMENT",
    "certificate": "$DIR/cert.pem",
    "privateKey": "$DIR/key.pem",
    "httpPort": $HTTP_PORT,
    "tlsPort": $TLS_PORT,
    "ocspResponderURL": "",
    "externalAccountBindingRequired": false
  }
}
JSON
# No artificial pauses before validating (Pebble sleeps up to 15 s by default).
export PEBBLE_VA_NOSLEEP=1
exec pebble -config "$DIR/pebble-config.json" -strict=false ${DNS:+-dnsserver "$DNS"}
