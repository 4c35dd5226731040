#!/usr/bin/env bash
# Start the local image registry (Debian's docker-registry, distribution 2.8) when none
# answers: no auth, filesystem storage, manifest deletion on. No systemd here: it runs in
# the background and logs to /var/log/stackport-registry.log. The data folder is kept
# across runs: it is CI's image cache.
#   STACKPORT_REGISTRY_ADDR=127.0.0.1:5000 scripts/registry.sh
set -euo pipefail
ADDR=${STACKPORT_REGISTRY_ADDR:-127.0.0.1:5000}
DIR=/var/lib/stackport/registry
CONFIG=$DIR/config.yml
LOG=/var/log/stackport-registry.log
# A wildcard listen address (":5000", "0.0.0.0:5000") is still probed on loopback.
probe=${ADDR/#:/127.0.0.1:}
probe=${probe/#0.0.0.0:/127.0.0.1:}
URL="http://$probe/v2/"

if ! command -v docker-registry >/dev/null 2>&1; then
  echo "installing docker-registry"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker-registry
fi

mkdir -p "$DIR/data"
chmod 700 "$DIR"
# Parallel runs (pytest-xdist workers, CI jobs) must not start two registries.
exec 9>"$DIR/.lock"
flock -w 60 9
# Upload sessions are signed with this secret; a fixed one survives restarts (and keeps
# the registry from warning about a random one on every start).
[ -s "$DIR/http-secret" ] || (umask 077; head -c 32 /dev/urandom | base64 >"$DIR/http-secret")

new=$(mktemp "$DIR/config.yml.XXXXXX")
cat >"$new" <<YAML
# Written by scripts/registry.sh: edits here are replaced on its next run.
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
  fields:
    service: stackport-registry
storage:
  filesystem:
    rootdirectory: $DIR/data
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: $ADDR
  secret: $(cat "$DIR/http-secret")
  headers:
    X-Content-Type-Options: [nosniff]
YAML
if cmp -s "$new" "$CONFIG"; then
  rm -f "$new"
else
  chmod 600 "$new"
  mv "$new" "$CONFIG"
fi

answers() { curl -fsS --max-time 2 "$URL" >/dev/null 2>&1; }

if answers; then
  exit 0
fi
echo "starting docker-registry on $ADDR"
# setsid: the registry outlives whoever ran this script (a test session, a CI step).
nohup setsid docker-registry serve "$CONFIG" >"$LOG" 2>&1 </dev/null 9>&- &
pid=$!
for _ in $(seq 1 60); do
  answers && exit 0
  kill -0 "$pid" 2>/dev/null || break  # exited (bad config, port taken): no use waiting
  sleep 0.5
done
echo "error: docker-registry did not answer on $URL; see $LOG" >&2
tail -20 "$LOG" >&2
exit 1
