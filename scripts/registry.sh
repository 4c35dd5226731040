#!/usr/bin/env bash
# Start the local image registry (Debian's docker-registry, distribution 2.8) when none
# answers: no auth, filesystem storage, manifest deletion on. No systemd here: it runs in
# the background and logs to /var/log/stackport-registry.log. The data folder is kept
# across runs: it is CI's image cache.
#   STACKPORT_REGISTRY_ADDR=127.0.0.1:5000 scripts/registry.sh
#
# Pulls from other hosts (docs/install.md, "The image registry"): with
# STACKPORT_REGISTRY_TLS_ADDR=IP:PORT (and STACKPORT_REGISTRY_CA=DIR, the portal's CA folder,
# stacks/runtime/engine_ca.py) a second, read-only docker-registry serves the same storage on
# that address with TLS (a server certificate of that CA for IP, in $DIR/tls) and basic auth
# (bcrypt htpasswd, $DIR/htpasswd). Its one account's name and password are made once and
# kept in $DIR/pull-credentials ("user:password", mode 600): what the portal's
# STACKPORT_REGISTRY_USERNAME/PASSWORD say. The address must already be on this machine.
# Pushes stay on the loopback listener above, which nothing outside this machine reaches.
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

# start CONFIG LOG WHAT: start a registry unless answers_fn answers; wait until it does.
start() {
  local config=$1 log=$2 what=$3 check=$4 pid
  "$check" && return 0
  echo "starting docker-registry on $what"
  # setsid: the registry outlives whoever ran this script (a test session, a CI step).
  nohup setsid docker-registry serve "$config" >"$log" 2>&1 </dev/null 9>&- &
  pid=$!
  for _ in $(seq 1 60); do
    "$check" && return 0
    kill -0 "$pid" 2>/dev/null || break  # exited (bad config, port taken): no use waiting
    sleep 0.5
  done
  echo "error: docker-registry did not answer on $what; see $log" >&2
  tail -20 "$log" >&2
  return 1
}

start "$CONFIG" "$LOG" "$URL" answers

TLS_ADDR=${STACKPORT_REGISTRY_TLS_ADDR:-}
[ -n "$TLS_ADDR" ] || exit 0
CA=${STACKPORT_REGISTRY_CA:?STACKPORT_REGISTRY_CA (the CA folder) is needed with STACKPORT_REGISTRY_TLS_ADDR}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if ! command -v htpasswd >/dev/null 2>&1; then
  echo "installing apache2-utils (htpasswd)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends apache2-utils
fi
(cd "$ROOT" && .venv/bin/python -m stacks.runtime.engine_ca server --ca "$CA" --name stackport-registry \
  --address "${TLS_ADDR%:*}" --out "$DIR/tls" >/dev/null)
if [ ! -s "$DIR/pull-credentials" ]; then
  (umask 077; echo "stackport-pull:$(head -c 24 /dev/urandom | base64 | tr -d '/+=')" >"$DIR/pull-credentials")
fi
IFS=: read -r PULL_USER PULL_PASSWORD <"$DIR/pull-credentials"
# Rewritten only when the password no longer matches (bcrypt salts differ on every run).
if ! htpasswd -vb "$DIR/htpasswd" "$PULL_USER" "$PULL_PASSWORD" >/dev/null 2>&1; then
  (umask 077; htpasswd -Bbn "$PULL_USER" "$PULL_PASSWORD" >"$DIR/htpasswd.new")
  mv "$DIR/htpasswd.new" "$DIR/htpasswd"
fi
TLS_CONFIG=$DIR/config-tls.yml
new=$(mktemp "$DIR/config-tls.yml.XXXXXX")
cat >"$new" <<YAML
# Written by scripts/registry.sh: edits here are replaced on its next run.
# Read-only: the same storage as $CONFIG, for pulls from other hosts.
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
  fields:
    service: stackport-registry-tls
storage:
  filesystem:
    rootdirectory: $DIR/data
  maintenance:
    uploadpurging:
      enabled: false
    readonly:
      enabled: true
auth:
  htpasswd:
    realm: stackport-registry
    path: $DIR/htpasswd
http:
  addr: $TLS_ADDR
  secret: $(cat "$DIR/http-secret")
  tls:
    certificate: $DIR/tls/cert.pem
    key: $DIR/tls/key.pem
    minimumtls: tls1.2
  headers:
    X-Content-Type-Options: [nosniff]
YAML
if cmp -s "$new" "$TLS_CONFIG"; then
  rm -f "$new"
else
  chmod 600 "$new"
  mv "$new" "$TLS_CONFIG"
fi
answers_tls() {
  curl -fsS --max-time 2 --cacert "$DIR/tls/ca.pem" -u "$PULL_USER:$PULL_PASSWORD" \
    "https://$TLS_ADDR/v2/" >/dev/null 2>&1
}
start "$TLS_CONFIG" /var/log/stackport-registry-tls.log "https://$TLS_ADDR/v2/" answers_tls
