#!/usr/bin/env bash
# Start (or stop) the HAProxy edge: Debian's haproxy 2.6 as a process of our own, in
# master-worker mode, with its config, maps, server state, admin socket and pid file in a
# folder of its own (never /etc/haproxy, never the distro's haproxy.service).
#   STACKPORT_HAPROXY_DIR=/var/lib/stackport/haproxy STACKPORT_HAPROXY_LISTEN=127.0.0.1:8080 \
#     STACKPORT_HAPROXY_HTTPS_LISTEN=127.0.0.1:8443 scripts/haproxy.sh [start|stop]
# The config is static: rendered here once, with a pool of STACKPORT_HAPROXY_BACKENDS
# backends (r0, r1, ...) of STACKPORT_HAPROXY_SLOTS server slots each, all in maintenance,
# and a frontend that picks a backend through host and path-prefix maps, on HTTP and on HTTPS
# (certificates from $DIR/certs/crt-list by SNI name, a self-signed default made here once;
# ALPN h2 and http/1.1), with HTTP-01 tokens, domain-claim tokens, redirects to HTTPS and
# HSTS by host from maps too. Routes and certificates are then
# set only through the runtime API on $DIR/admin.sock by stacks/backends/haproxy.py, which
# mirrors every change to the map files and the server-state file: a restart (this script
# after a stop, or after a crash) comes back with every route. No route change reloads.
# Idempotent: `start` with a router running this very config does nothing; with another
# config (other listen address or pool size) it saves the state and reloads it: a new worker
# takes the listening sockets, the old one finishes its requests (no connection refused).
# `stop` saves the server state, then stops it (by its pid).
set -euo pipefail
ACTION=${1:-start}
LISTEN=${STACKPORT_HAPROXY_LISTEN:-${STACKPORT_EDGE_LISTEN:-127.0.0.1:8080}}
HTTPS_LISTEN=${STACKPORT_HAPROXY_HTTPS_LISTEN:-${STACKPORT_EDGE_HTTPS_LISTEN:-127.0.0.1:8443}}
DIR=${STACKPORT_HAPROXY_DIR:-/var/lib/stackport/haproxy}
LOG=${STACKPORT_HAPROXY_LOG:-/var/log/stackport-haproxy.log}
BACKENDS=${STACKPORT_HAPROXY_BACKENDS:-100}
SLOTS=${STACKPORT_HAPROXY_SLOTS:-20}
# Threads: half the CPUs, at least one. The edge shares its machine with the portal and the
# customers' containers; on 2 CPUs one thread served as many requests as two, for less CPU a
# request, and a resumed TLS request's p99 went from 1.6x nginx's to 0.7x (bench/README.md,
# B-8 and B-10).
THREADS=${STACKPORT_HAPROXY_THREADS:-$((($(nproc) + 1) / 2))}
HAPROXY=${STACKPORT_HAPROXY_BIN:-/usr/sbin/haproxy}

case $ACTION in start | stop) ;; *)
  echo "usage: $0 [start|stop]" >&2
  exit 2
  ;;
esac
# Everything below goes into the config unquoted: only safe characters.
for address in "$LISTEN" "$HTTPS_LISTEN"; do
  if ! [[ $address =~ ^(\[[0-9A-Fa-f:.]+\]|[0-9A-Za-z.-]*):[0-9]{1,5}$ ]]; then
    echo "error: invalid listen address '$address' (expected host:port)" >&2
    exit 2
  fi
done
# A unix socket path has at most 107 bytes: the folder leaves room for "/admin.sock".
if ! [[ $DIR =~ ^/[A-Za-z0-9._/-]+$ ]] || [ ${#DIR} -gt 90 ]; then
  echo "error: STACKPORT_HAPROXY_DIR must be an absolute path of [A-Za-z0-9._/-], at most 90 characters" >&2
  exit 2
fi
if ! [[ $THREADS =~ ^[1-9][0-9]{0,2}$ ]]; then
  echo "error: STACKPORT_HAPROXY_THREADS must be a number (1-999)" >&2
  exit 2
fi
if ! [[ $BACKENDS =~ ^[1-9][0-9]{0,3}$ && $SLOTS =~ ^[1-9][0-9]{0,2}$ ]]; then
  echo "error: STACKPORT_HAPROXY_BACKENDS (1-9999) and STACKPORT_HAPROXY_SLOTS (1-999) must be numbers" >&2
  exit 2
fi
if ! [[ -x $HAPROXY ]]; then
  echo "error: no haproxy at $HAPROXY (scripts/system-deps.sh test installs Debian's)" >&2
  exit 2
fi

CONFIG=$DIR/haproxy.cfg
PIDFILE=$DIR/haproxy.pid
SOCKET=$DIR/admin.sock
MAPS=$DIR/maps
STATE=$DIR/server-state
CERTS=$DIR/certs
PAGES=$DIR/pages
mkdir -p "$MAPS" "$CERTS" "$PAGES"
chmod 700 "$DIR" "$CERTS"
# HAProxy outlives this script: it must not keep descriptors it inherited (a caller's lock
# file, a CI job's pipe).
for fd in /proc/$$/fd/*; do
  fd=${fd##*/}
  if [ "$fd" -gt 2 ] 2>/dev/null; then eval "exec $fd>&-" 2>/dev/null || true; fi
done
# Parallel runs (pytest-xdist workers, CI jobs) must not start two routers.
exec 9>"$DIR/.script.lock"
flock -w 60 9

# cli COMMAND: the runtime API's answer (python3: no socat needed).
cli() {
  python3 - "$SOCKET" "$1" <<'PY'
import socket, sys
with socket.socket(socket.AF_UNIX) as sock:
    sock.settimeout(5)
    sock.connect(sys.argv[1])
    sock.sendall(sys.argv[2].encode() + b"\n")
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
sys.stdout.write(b"".join(chunks).decode())
PY
}

# alive PID: running (an exited process left unreaped by whoever adopted it is not).
alive() {
  local state
  state=$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null) || return 1
  [[ -n $state && $state != Z ]]
}

running_pid() {
  local pid
  [[ -f $PIDFILE ]] || return 1
  pid=$(cat "$PIDFILE")
  [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" || return 1
  [[ $(readlink -f "/proc/$pid/exe" 2>/dev/null) == "$(readlink -f "$HAPROXY")" ]] || return 1
  echo "$pid"
}

answers() {
  cli "show info" 2>/dev/null | grep -q '^Name: HAProxy' || return 1
  local host=${LISTEN%:*}
  case $host in "" | 0.0.0.0) host=127.0.0.1 ;; "[::]") host="[::1]" ;; esac
  curl -sS --max-time 2 -o /dev/null "http://$host:${LISTEN##*:}/" 2>/dev/null
}

# The server state (slot addresses, maintenance, health) as of now.
write_state() {
  local tmp
  tmp=$(mktemp "$STATE.XXXXXX")
  if cli "show servers state" >"$tmp" && head -1 "$tmp" | grep -qx '1'; then
    mv -f "$tmp" "$STATE"
  else
    rm -f "$tmp"
    return 1
  fi
}

# ... under the lock the Python client takes for its writes, so the file never mixes two
# moments.
save_state() {
  (
    flock -w 30 8
    write_state
  ) 8>"$DIR/state.lock"
}

# The worker's pid, or nothing (no answer: a worker is being replaced).
worker_pid() {
  { cli "show info" 2>/dev/null || true; } | awk '/^Pid:/ {print $2}'
}

# reload MASTER: load the new config ($new, checked) without dropping a connection: the
# master (master-worker mode) starts a new worker on SIGUSR2, hands it the listening sockets,
# and the old worker finishes the requests it has (its keep-alive connections close after
# their answer). Under the client's lock from the saved state until the new worker answers,
# so no route change is lost between. Fails (the caller restarts instead) when no new worker
# answers within 30 s.
reload() {
  local master=$1 old
  old=$(worker_pid)
  [[ -n $old ]] || return 1
  (
    flock -w 30 8
    write_state || exit 1
    mv -f "$new" "$CONFIG"
    kill -USR2 "$master"
    for _ in $(seq 1 300); do
      pid=$(worker_pid)
      if [[ -n $pid && $pid != "$old" ]] && answers; then
        exit 0
      fi
      sleep 0.1
    done
    exit 1
  ) 8>"$DIR/state.lock"
}

stop() {
  local pid
  pid=$(running_pid) || return 0
  save_state || true
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 80); do
    alive "$pid" || break
    sleep 0.05
  done
  if alive "$pid"; then
    echo "error: haproxy (pid $pid) did not stop" >&2
    exit 1
  fi
  rm -f "$PIDFILE"
}

if [[ $ACTION == stop ]]; then
  stop
  exit 0
fi

for map in routes hosts prefixes health checkhost prefix strip acme redirect hsts pages claims; do
  [[ -f $MAPS/$map.map ]] || : >"$MAPS/$map.map"
done
# The default certificate (a client without SNI, or a name with no certificate of its own):
# self-signed, made once. The crt-list starts with it; stacks/backends/haproxy.py adds a
# line per host name ("<file> <name>") through the runtime API and writes the list back.
if ! [[ -s $CERTS/default.pem ]]; then
  tmp=$(mktemp -d "$CERTS/.default.XXXXXX")
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj /CN=stackport-default -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
  cat "$tmp/cert.pem" "$tmp/key.pem" >"$tmp/default.pem"
  chmod 600 "$tmp/default.pem"
  mv -f "$tmp/default.pem" "$CERTS/default.pem"
  rm -rf "$tmp"
fi
[[ -s $CERTS/crt-list ]] || echo "$CERTS/default.pem" >"$CERTS/crt-list"

# Maintenance pages (a stopped or suspended site): the pages map gives a route's backend the
# id of its page (the SHA-256 of its bytes), stacks/backends/haproxy.py writes the page to
# $PAGES/<id>.html before it sets the map entry, and this Lua service answers it byte for byte
# (503, Retry-After, no-store). A page's file never changes (its name is its content), so
# each one is read from disk once and kept in memory (at most 256 of them at a time). The
# same file holds the action that holds a request while its route has no usable slot.
lua=$(mktemp "$DIR/pages.lua.XXXXXX")
cat >"$lua" <<LUA
-- Rendered by scripts/haproxy.sh. Do not edit.
local folder = "$PAGES/"
local cache, cached = {}, 0
core.register_service("stackport_page", "http", function(applet)
    local id = applet:get_var("txn.page")
    local body = id and cache[id]
    if body == nil and id and id:match("^[0-9a-f]+\$") then
        local file = io.open(folder .. id .. ".html", "rb")
        if file then
            body = file:read("a")
            file:close()
            if cached >= 256 then
                cache, cached = {}, 0
            end
            cache[id], cached = body, cached + 1
        end
    end
    body = body or ""
    applet:set_status(503)
    applet:add_header("content-type", "text/html; charset=utf-8")
    applet:add_header("retry-after", "300")
    applet:add_header("cache-control", "no-store")
    applet:add_header("content-length", tostring(#body))
    applet:start_response()
    if applet.method ~= "HEAD" then
        applet:send(body)
    end
end)

-- A request for a route with no usable slot (a deploy's first replica not up yet, every one
-- being replaced) waits for one like on the Caddy edge: the route's backend is polled every
-- 100 ms, up to 5 s, then the request goes on (to a slot, or to HAProxy's 503). Only such a
-- request comes here (the backends' "nbsrv lt 1"): the normal path runs no Lua.
core.register_action("stackport_wait_slot", {"http-req"}, function(txn)
    local backend = txn:get_var("txn.be")
    if backend == nil or not backend:match("^r[0-9]+\$") then
        return
    end
    for _ = 1, 50 do
        core.msleep(100)
        if txn.f:nbsrv(backend) > 0 then
            return
        end
    end
end)
LUA
chmod 600 "$lua"
mv -f "$lua" "$DIR/pages.lua"

new=$(mktemp "$DIR/haproxy.cfg.XXXXXX")
{
  cat <<CFG
# Rendered by scripts/haproxy.sh; routes live in the maps and the server state, set through
# the runtime API (stacks/backends/haproxy.py). Do not edit.
global
    stats socket $SOCKET mode 600 level admin
    stats timeout 30s
    server-state-file $STATE
    # A route's health path and Host can contain characters a URI would need escaped.
    tune.bufsize 16384
    nbthread $THREADS
    lua-load $DIR/pages.lua
    ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
    mode http
    load-server-state-from-file global
    option http-keep-alive
    option forwardfor
    http-reuse safe
    balance roundrobin
    timeout connect 300ms
    timeout client 60s
    timeout server 300s
    timeout http-request 30s
    timeout http-keep-alive 60s
    timeout tunnel 1h
    timeout check 1s
    # A request that finds its slot's container gone (refused, silent, closed without an
    # answer) is sent again, to another slot (redispatch on every retry). Only GET, HEAD and
    # OPTIONS are sent again after they reached a server; others only when nothing was sent.
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout
    # Slots: all in maintenance until a route takes them; a new one is held down until its
    # first health check passes (stacks/backends/haproxy.py).
    default-server check inter 1s fastinter 250ms downinter 1s rise 1 fall 2 disabled

frontend edge
    bind $LISTEN
    bind $HTTPS_LISTEN ssl crt-list $CERTS/crt-list alpn h2,http/1.1
    # The challenge paths, matched ignoring case like the Caddy edge's path matchers.
    acl acme_path path_beg -i /.well-known/acme-challenge/
    acl claim_path path_beg -i /.well-known/stackport-challenge/
    # HTTP-01 challenges (ACME), on any host, before anything else: token -> key authorization.
    http-request set-var(txn.acme) path,field(4,/),map($MAPS/acme.map) if { path_reg ^/[.]well-known/acme-challenge/[-_A-Za-z0-9]+\$ }
    http-request return status 200 content-type text/plain lf-string "%[var(txn.acme)]" if { var(txn.acme) -m found }
    http-request disable-l7-retry unless METH_GET or METH_HEAD or METH_OPTIONS
    http-request del-header X-Forwarded-For
    http-request set-header X-Forwarded-Proto http unless { ssl_fc }
    http-request set-header X-Forwarded-Proto https if { ssl_fc }
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-var(txn.host) req.hdr(host),field(1,:),lower
    # Domain claims (the HTTP proof of control of a name, not ACME), on HTTP and HTTPS, before
    # redirects and HSTS: a pending host's token on that host only (keys "host" + the path in
    # lowercase, values the token as issued); anything else under the path is a 404.
    http-request set-var-fmt(txn.claimkey) "%[var(txn.host)]%[path,lower]" if claim_path
    http-request set-var(txn.claim) var(txn.claimkey),map($MAPS/claims.map) if claim_path
    http-request return status 200 content-type "text/plain; charset=utf-8" lf-string "%[var(txn.claim)]" if { var(txn.claim) -m found }
    http-request return status 404 content-type "text/plain; charset=utf-8" lf-string "No such challenge here\n" if claim_path
    # Per host: HTTP -> HTTPS (308, to the map's origin: "https://host[:port]"; never ACME's
    # path), and HSTS (the map's header value) on HTTPS answers.
    http-request set-var(txn.redirect) var(txn.host),map($MAPS/redirect.map) unless { ssl_fc } || acme_path
    http-request redirect code 308 location %[var(txn.redirect)]%[pathq] if { var(txn.redirect) -m found }
    http-request set-var(txn.hsts) var(txn.host),map($MAPS/hsts.map) if { ssl_fc }
    http-after-response set-header Strict-Transport-Security %[var(txn.hsts)] if { var(txn.hsts) -m found }
    # The backend: the longest path prefix of the host ("host/prefix/" keys, lowercase, so
    # "/api" matches "/api" and "/api/..." but not "/apix"), else the host's own route.
    http-request set-var-fmt(txn.key) "%[var(txn.host)]%[path,lower]/"
    http-request set-var(txn.be) var(txn.key),map_beg($MAPS/prefixes.map)
    http-request set-var(txn.be) var(txn.host),map($MAPS/hosts.map) unless { var(txn.be) -m found }
    # A route showing a maintenance page (the pages map: backend -> page id) answers it.
    http-request set-var(txn.page) var(txn.be),map($MAPS/pages.map) if { var(txn.be) -m found }
    http-request use-service lua.stackport_page if { var(txn.page) -m found }
    # A prefix route that strips its prefix: /shop/cart reaches the app as /cart, /shop as /,
    # with the prefix in X-Forwarded-Prefix.
    http-request set-var(txn.prefix) var(txn.be),map($MAPS/strip.map) if { var(txn.be) -m found }
    http-request set-header X-Forwarded-Prefix %[var(txn.prefix)] if { var(txn.prefix) -m found }
    http-request set-header X-Stackport-Path "%[var(txn.prefix)]#%[path]" if { var(txn.prefix) -m found }
    http-request replace-header X-Stackport-Path '(?i)^([^#]*)#\\1(.*)\$' '\\2' if { var(txn.prefix) -m found }
    http-request set-path / if { var(txn.prefix) -m found } { req.hdr(X-Stackport-Path) -m len 0 }
    http-request set-path %[req.hdr(X-Stackport-Path)] if { var(txn.prefix) -m found } !{ req.hdr(X-Stackport-Path) -m len 0 }
    http-request del-header X-Stackport-Path
    use_backend %[var(txn.be)] if { var(txn.be) -m found }
    default_backend stackport_not_found

backend stackport_not_found
    http-request return status 404 content-type "text/plain; charset=utf-8" lf-string "No site is configured for this address\n"

# No traffic comes here: it loads the maps only the runtime API reads (route id -> backend,
# each route's path prefix as given), so that they exist and persist like the others.
backend stackport_registry
    http-request set-var(txn.route) str(-),map($MAPS/routes.map)
    http-request set-var(txn.prefix) str(-),map($MAPS/prefix.map)
CFG
  for ((n = 0; n < BACKENDS; n++)); do
    cat <<CFG

backend r$n
    option httpchk
    http-check send meth GET uri-lf "%[str(r$n),map($MAPS/health.map,/healthz)]" hdr Host "%[str(r$n),map($MAPS/checkhost.map,localhost)]"
    http-check expect status 200-299
    # No usable slot (none passed its check yet, all being replaced): wait for one, up to 5 s.
    http-request lua.stackport_wait_slot if { nbsrv lt 1 }
    # A slot's address comes back from the server-state file at a start only for a server
    # named by a host name ("init-addr last"; one given as an IP keeps the config's IP and
    # takes only the port); slot.invalid is never looked up: a slot with no saved state
    # starts at 127.0.0.1:9, in maintenance.
    server-template s 1-$SLOTS slot.invalid:9 init-addr last,127.0.0.1
CFG
  done
} >"$new"

if pid=$(running_pid) && answers && cmp -s "$new" "$CONFIG"; then
  rm -f "$new"
  exit 0
fi
if ! "$HAPROXY" -c -q -f "$new" >/dev/null 2>"$new.err"; then
  echo "error: the rendered config is refused:" >&2
  cat "$new.err" >&2
  rm -f "$new" "$new.err"
  exit 1
fi
rm -f "$new.err"
chmod 600 "$new"
if pid=$(running_pid) && answers; then
  echo "reloading haproxy (pid $pid) with a new config: $BACKENDS backends of $SLOTS slots; the routes and connections are kept"
  if reload "$pid"; then
    exit 0
  fi
  echo "the reload did not answer; restarting haproxy (pid $pid), the routes are kept"
  [[ -f $new ]] || cp "$CONFIG" "$new"
  stop
fi
mv -f "$new" "$CONFIG"

echo "starting haproxy: edge on $LISTEN and $HTTPS_LISTEN (HTTPS), $BACKENDS backends of $SLOTS slots, runtime API on $SOCKET"
: >"$LOG"
# A stale pid file from a crash: haproxy would refuse nothing, but running_pid must not
# find a recycled pid.
rm -f "$PIDFILE"
nohup setsid "$HAPROXY" -W -f "$CONFIG" -p "$PIDFILE" >>"$LOG" 2>&1 </dev/null 9>&- &
started=$!
for _ in $(seq 1 120); do
  if answers; then
    exit 0
  fi
  alive "$started" || break # exited (bad state, port taken): no use waiting
  sleep 0.25
done
echo "error: haproxy did not answer on $SOCKET and $LISTEN; see $LOG" >&2
tail -20 "$LOG" >&2
exit 1
