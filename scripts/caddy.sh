#!/usr/bin/env bash
# Start the edge router (Debian's Caddy 2.6) when its admin API does not answer. It starts
# with one HTTP server, "edge", that has no customer routes yet: every host name gets a
# 404 (without the final catch-all route Caddy answers unmatched hosts with an empty 200).
# Routes are added later through the admin API by stacks/backends/edge.py, never by editing files.
# No systemd here: it runs in the background and logs to /var/log/stackport-caddy.log.
#   STACKPORT_CADDY_ADMIN=127.0.0.1:2019 STACKPORT_EDGE_LISTEN=127.0.0.1:8080 scripts/caddy.sh
# Caddy never reaches the internet: automatic HTTPS (ACME) is off and 2.6 has no telemetry.
# Its config is not persisted: after a restart the backend's reconcile puts the routes back.
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
URL="http://$ADMIN/config/"

if ! command -v caddy >/dev/null 2>&1; then
  echo "installing caddy"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends caddy
fi

mkdir -p "$DIR/data" "$DIR/config"
chmod 700 "$DIR"
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
  "admin": {"listen": "$ADMIN", "config": {"persist": false}},
  "logging": {
    "logs": {"default": {"exclude": ["http.handlers.reverse_proxy.health_checker.active"]}}
  },
  "apps": {
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

answers() { curl -fsS --max-time 2 -o /dev/null "$URL" 2>/dev/null; }

if answers; then
  exit 0
fi
echo "starting caddy: admin API on $ADMIN, edge server on $LISTEN"
# setsid: Caddy outlives whoever ran this script (a test session, a CI step). Its data
# (certificate storage, instance id) and config folders stay out of root's home.
HOME=$DIR XDG_DATA_HOME=$DIR/data XDG_CONFIG_HOME=$DIR/config \
  nohup setsid caddy run --config "$CONFIG" --pidfile "$PIDFILE" >"$LOG" 2>&1 </dev/null 9>&- &
pid=$!
for _ in $(seq 1 60); do
  answers && exit 0
  kill -0 "$pid" 2>/dev/null || break  # exited (bad config, port taken): no use waiting
  sleep 0.5
done
echo "error: caddy did not answer on $URL; see $LOG" >&2
tail -20 "$LOG" >&2
exit 1
