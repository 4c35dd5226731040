#!/usr/bin/env bash
# Extra Docker hosts on this one machine, for the multi-host backend: each host "spN" is a
# Debian dockerd in a network namespace of its own, with its own data and exec folders,
# reached from the root namespace through a unix socket. Stopping a host's dockerd (or
# taking its link down) is a real host failure.
#   scripts/docker-hosts.sh up [N]     start hosts sp1..spN (default 2); prints the hosts
#   scripts/docker-hosts.sh down [N]   stop hosts sp1..spN (default: every host found)
#   scripts/docker-hosts.sh status     print the hosts that answer
# Printed on stdout, one host a line: name, Docker URL, host address, container block:
#   sp1 unix:///run/stackport/h1/docker.sock 10.199.1.2 10.225.0.0/16
# Each host's engine also listens on tcp://10.199.N.2:2376 with mutual TLS (--tlsverify),
# its certificate from the CA in /var/lib/stackport/hosts/ca (STACKPORT_HOSTS_CA).
# Progress goes to stderr. Idempotent: "up" with everything up changes nothing.
#
# Per host N (1..31):
#   netns stackport-hN; veth sp-hN (root side, 10.199.N.1/24) <-> eth0 (inside,
#   10.199.N.2/24, default route via 10.199.N.1); dockerd --data-root
#   /var/lib/stackport/hosts/hN (kept by "down": image cache), --exec-root and pidfile
#   under /run/stackport/hN, socket /run/stackport/hN/docker.sock, its own containerd
#   (started by dockerd, namespace stackport-hN), cgroup parent /stackport-hN, log
#   /var/log/stackport-hosts-hN.log. Started with "nsenter --net", not "ip netns exec"
#   (that remounts /sys and dockerd fails with "Devices cgroup isn't mounted").
#
# Registry: every host pulls the catalog's references unchanged
# (127.0.0.1:5000/stackport/...@sha256:...). Inside each namespace a socat listens on
# 127.0.0.1:5000 and forwards every connection to a unix socket
# (/run/stackport/hN/registry.sock, mode 600) served by a second socat in the root
# namespace that connects to the registry on the root's 127.0.0.1:5000. A unix socket is
# a file, not bound to a network namespace: the registry stays on loopback, gets no
# address on any link, and no container can reach it (a container's 127.0.0.1 is its
# own; only processes in the host's namespace, dockerd and containerd, see the
# forwarder). The engine trusts 127.0.0.0/8 registries without TLS, as the root engine
# does. (A registry mirror cannot do this: mirrors only apply to docker.io.)
# The same images are also served over TLS with credentials, as a host on another machine
# pulls them (docs/install.md, "The image registry"): a read-only registry on
# $REGISTRY_TLS (default 10.199.0.1:5443, STACKPORT_HOSTS_REGISTRY_TLS; "" for none), an
# address of the root namespace (on its loopback link) that every host reaches through its
# default route; its certificate is from $CA, which every engine here trusts for
# it (/etc/docker/certs.d/<address>/ca.crt, one folder for all dockerds of this machine);
# scripts/registry.sh starts it and keeps its credentials. Hosts pull through it when the
# portal's STACKPORT_REGISTRY_PULL_URL names it. The root namespace lets the hosts' own
# addresses (not containers') in to that port only.
#
# Container network ("fabric"), see docs/backends.md, "Several Docker hosts":
#   10.224.0.0/11 holds every stack container. Host N owns 10.(224+N).0.0/16; stack S
#   (1..254, one number per stack across the cluster) gets 10.(224+N).S.0/24 on host N
#   as a plain bridge network without masquerading. The root namespace plays the LAN: it
#   routes each host's /16 to that host and forwards container-to-container traffic
#   between hosts, and hosts' own traffic to public addresses. Each host's egress policy
#   (scripts/host-firewall.sh --fabric, an nftables table of its own) lets a container
#   talk only to the same third octet (same stack, any host) and lets the root namespace
#   (the edge, 10.199.N.1) in; a stack whose plan allows the internet (bridge "spe-...")
#   also reaches public addresses, masqueraded behind the host's address; everything
#   else from or to a stack container is dropped: other stacks, other hosts' own
#   addresses, the root namespace's services, private and link-local ranges. The rules
#   are static: the backend only names and creates networks.
# Swarm overlay networks were tried too: plain VXLAN overlays work here, encrypted ones do
# not (no ESP in this kernel: "Failed Adding fSA{... rfc4106(gcm(aes)) ...}: function not
# implemented"), IPVS is missing (no service VIPs or routing mesh), and the edge cannot
# reach an overlay address without published ports. docs/backends.md has the comparison.
set -euo pipefail

# Daemons started here (dockerd, socat) must not inherit a descriptor of the caller's:
# "flock /tmp/netns.lock scripts/docker-hosts.sh up" would stay locked as long as they run.
for fd in /proc/$$/fd/*; do
  fd=${fd##*/}
  if [ "$fd" -gt 2 ] 2>/dev/null; then eval "exec $fd>&-" 2>/dev/null || true; fi
done

RUN=/run/stackport
LIB=/var/lib/stackport/hosts
REGISTRY=${STACKPORT_HOSTS_REGISTRY:-127.0.0.1:5000}
POOL=10.224.0.0/11
HOSTS_NET=10.199.0.0/16
CA=${STACKPORT_HOSTS_CA:-$LIB/ca}
TLS_PORT=2376
REGISTRY_TLS=${STACKPORT_HOSTS_REGISTRY_TLS-10.199.0.1:5443}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Never forwarded from a host to outside the fabric (scripts/host-firewall.sh blocks them
# inside the hosts already; this is the LAN's own line).
PRIVATE="0.0.0.0/8 10.0.0.0/8 100.64.0.0/10 127.0.0.0/8 169.254.0.0/16 172.16.0.0/12 192.0.0.0/24 192.168.0.0/16 198.18.0.0/15 224.0.0.0/3"
MAX_HOSTS=31

log() { echo "$*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

netns() { echo "stackport-h$1"; }
link_root() { echo "sp-h$1"; }
root_ip() { echo "10.199.$1.1"; }
host_ip() { echo "10.199.$1.2"; }
block() { echo "10.$((224 + $1)).0.0/16"; }
sock() { echo "$RUN/h$1/docker.sock"; }
ns_path() { echo "/var/run/netns/$(netns "$1")"; }
# nsenter execs the command (it forks only to enter a PID namespace): "nsenter ... &"
# leaves the command's own pid in $!.
in_ns() { local n=$1; shift; nsenter --net="$(ns_path "$n")" "$@"; }
answers() { docker -H "unix://$(sock "$1")" version >/dev/null 2>&1; }

require_tools() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v socat >/dev/null 2>&1 || missing+=(socat)
  command -v iptables >/dev/null 2>&1 || missing+=(iptables)
  command -v nft >/dev/null 2>&1 || missing+=(nftables)
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
  fi
}

# Insert rule "$@" (chain first) unless it is there: iptables -C/-I on one table.
ensure_rule() {
  local ns=$1 table=$2 chain=$3; shift 3
  local ipt=(iptables -w -t "$table")
  [ "$ns" = root ] || ipt=(in_ns "$ns" iptables -w -t "$table")
  "${ipt[@]}" -C "$chain" "$@" 2>/dev/null || "${ipt[@]}" -I "$chain" 1 "$@"
}

# Root namespace (the LAN): forward container-to-container traffic between hosts, and a
# host's own (masqueraded) traffic to public addresses, the egress its containers' plans
# allow (the host's rules decide which); accept nothing from a host's link but replies to
# connections the root opened (the edge).
root_rules() {
  iptables -w -N STACKPORT-HOSTS 2>/dev/null || true
  iptables -w -N STACKPORT-HOSTS-IN 2>/dev/null || true
  iptables -w -N STACKPORT-HOSTS-OUT 2>/dev/null || true
  iptables -w -F STACKPORT-HOSTS-OUT
  local range
  for range in $PRIVATE; do iptables -w -A STACKPORT-HOSTS-OUT -d "$range" -j RETURN; done
  iptables -w -A STACKPORT-HOSTS-OUT -j ACCEPT
  iptables -w -F STACKPORT-HOSTS
  iptables -w -A STACKPORT-HOSTS -i sp-h+ -o sp-h+ -s "$POOL" -d "$POOL" -j ACCEPT
  iptables -w -A STACKPORT-HOSTS -o sp-h+ -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
  iptables -w -A STACKPORT-HOSTS -i sp-h+ ! -o sp-h+ -s "$HOSTS_NET" -j STACKPORT-HOSTS-OUT
  iptables -w -A STACKPORT-HOSTS -i sp-h+ -j DROP
  iptables -w -A STACKPORT-HOSTS -o sp-h+ -j DROP
  iptables -w -F STACKPORT-HOSTS-IN
  iptables -w -A STACKPORT-HOSTS-IN -i sp-h+ -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
  if [ -n "$REGISTRY_TLS" ]; then
    iptables -w -A STACKPORT-HOSTS-IN -i sp-h+ -s "$HOSTS_NET" -d "${REGISTRY_TLS%:*}" -p tcp \
      --dport "${REGISTRY_TLS##*:}" -j ACCEPT
  fi
  iptables -w -A STACKPORT-HOSTS-IN -i sp-h+ -j DROP
  ensure_rule root filter FORWARD -j STACKPORT-HOSTS
  ensure_rule root filter INPUT -j STACKPORT-HOSTS-IN
  # The LAN's own way out, as a real LAN's router has: what a host may send to a public
  # address (STACKPORT-HOSTS-OUT let it through; the hosts masquerade their containers
  # already) leaves with this machine's address. Without it the hosts reach only what is
  # routed here (the tests' "outside" namespace), not the package registries builds need.
  ensure_rule root nat POSTROUTING -s "$HOSTS_NET" ! -o sp-h+ -j MASQUERADE
  [ "$(sysctl -n net.ipv4.ip_forward)" = 1 ] || sysctl -qw net.ipv4.ip_forward=1
}

remove_root_rules() {
  iptables -w -t nat -D POSTROUTING -s "$HOSTS_NET" ! -o sp-h+ -j MASQUERADE 2>/dev/null || true
  iptables -w -D FORWARD -j STACKPORT-HOSTS 2>/dev/null || true
  iptables -w -D INPUT -j STACKPORT-HOSTS-IN 2>/dev/null || true
  for chain in STACKPORT-HOSTS STACKPORT-HOSTS-IN STACKPORT-HOSTS-OUT; do
    iptables -w -F "$chain" 2>/dev/null || true
    iptables -w -X "$chain" 2>/dev/null || true
  done
}

# Inside host N. What containers may NOT do is the egress policy, an nftables table of its
# own (scripts/host-firewall.sh), applied before Docker's rules and whatever they say.
# Docker's own FORWARD rules drop routed traffic into its bridges, so DOCKER-USER (which
# dockerd keeps first in FORWARD and never flushes) lets through what the policy may allow:
# the edge and the same stack on other hosts (the policy narrows it to the same stack).
# Both rewritten whole on every "up".
host_rules() {
  local n=$1
  "$HERE/host-firewall.sh" apply --netns "$(netns "$n")" --tenants "$POOL" \
    --edge "$(root_ip "$n")" --fabric --out eth0
  in_ns "$n" iptables -w -P FORWARD DROP
  in_ns "$n" iptables -w -F DOCKER-USER
  in_ns "$n" iptables -w -A DOCKER-USER -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
  in_ns "$n" iptables -w -A DOCKER-USER -s "$POOL" -d "$POOL" -j ACCEPT
  in_ns "$n" iptables -w -A DOCKER-USER -i eth0 -s "$(root_ip "$n")" -d "$POOL" -j ACCEPT
  in_ns "$n" iptables -w -A DOCKER-USER -j RETURN
  # Earlier versions of this script kept the policy in iptables.
  in_ns "$n" iptables -w -D INPUT -j STACKPORT-INPUT 2>/dev/null || true
  in_ns "$n" iptables -w -F STACKPORT-INPUT 2>/dev/null || true
  in_ns "$n" iptables -w -X STACKPORT-INPUT 2>/dev/null || true
}

ensure_link() {
  local n=$1 ns link
  ns=$(netns "$n")
  link=$(link_root "$n")
  [ -e "/var/run/netns/$ns" ] || ip netns add "$ns"
  if ! ip link show "$link" >/dev/null 2>&1; then
    in_ns "$n" ip link del eth0 2>/dev/null || true
    ip link add "$link" type veth peer name eth0 netns "$ns"
  fi
  ip addr replace "$(root_ip "$n")/24" dev "$link"
  ip link set "$link" up
  in_ns "$n" ip link set lo up
  in_ns "$n" ip addr replace "$(host_ip "$n")/24" dev eth0
  in_ns "$n" ip link set eth0 up
  in_ns "$n" ip route replace default via "$(root_ip "$n")"
  ip route replace "$(block "$n")" via "$(host_ip "$n")" dev "$link"
}

write_config() {
  local n=$1 new
  new=$(mktemp "$RUN/h$n/daemon.json.XXXXXX")
  # The engine ID comes from this key: the default (/etc/docker/key.json) is the root
  # engine's, and every host would report its ID.
  # Networks the backend does not place itself (docker0, networks created without a
  # subnet) come from 172.30/172.31: never routed out of the host, same on every host.
  cat >"$new" <<JSON
{
  "live-restore": false,
  "bip": "172.30.0.1/24",
  "default-address-pools": [{"base": "172.31.0.0/16", "size": 24}],
  "insecure-registries": ["$REGISTRY"],
  "cgroup-parent": "/stackport-h$n",
  "deprecated-key-path": "$LIB/h$n/key.json",
  "log-driver": "json-file",
  "log-opts": {"max-size": "10m", "max-file": "3"}
}
JSON
  mv "$new" "$RUN/h$n/daemon.json"
}

# A process that exited but was not reaped yet (a zombie: PID 1 here may not reap) is gone.
running() { local state; state=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $state != Z* ]]; }
pid_alive() { [ -s "$1" ] && running "$(cat "$1")"; }

ensure_registry_forwarder() {
  local n=$1 dir=$RUN/h$n
  if ! pid_alive "$dir/registry-root.pid"; then
    rm -f "$dir/registry.sock"
    setsid socat "UNIX-LISTEN:$dir/registry.sock,fork,mode=600" "TCP:$REGISTRY" \
      </dev/null >>"/var/log/stackport-hosts-h$n.log" 2>&1 9>&- &
    echo $! >"$dir/registry-root.pid"
  fi
  if ! pid_alive "$dir/registry-ns.pid"; then
    nsenter --net="$(ns_path "$n")" setsid socat "TCP-LISTEN:${REGISTRY##*:},bind=127.0.0.1,fork,reuseaddr" \
      "UNIX-CONNECT:$dir/registry.sock" </dev/null >>"/var/log/stackport-hosts-h$n.log" 2>&1 9>&- &
    echo $! >"$dir/registry-ns.pid"
  fi
}

# The host's Docker API on tcp, mutual TLS only (docs/security.md, "Docker engines over
# TCP"): a server certificate from the fabric's CA ($CA, made with the portal's own module;
# point STACKPORT_ENGINE_CA_DIR at it so the portal's client certificate comes from it).
# Without the project's virtualenv the hosts listen on their unix socket only.
ensure_tls() {
  local n=$1 root
  root=$(cd "$HERE/.." && pwd)
  [ -x "$root/.venv/bin/python" ] || { log "no $root/.venv: sp$n without a TLS listener"; return 0; }
  (cd "$root" && .venv/bin/python -m stacks.runtime.engine_ca server --ca "$CA" --name "sp$n" \
    --address "$(host_ip "$n")" --out "$RUN/h$n/tls" >/dev/null)
}
tls_flags() {
  local n=$1 tls=$RUN/h$1/tls
  [ -s "$tls/cert.pem" ] || return 0
  echo "--host tcp://$(host_ip "$n"):$TLS_PORT --tlsverify --tlscacert $tls/ca.pem --tlscert $tls/cert.pem --tlskey $tls/key.pem"
}
listens_tls() { in_ns "$1" ss -Hltn "sport = :$TLS_PORT" | grep -q .; }

# The registry's TLS listener (see the header), and every engine here trusting its CA.
ensure_registry_tls() {
  [ -n "$REGISTRY_TLS" ] || return 0
  local root ip=${REGISTRY_TLS%:*}
  root=$(cd "$HERE/.." && pwd)
  [ -x "$root/.venv/bin/python" ] || { log "no $root/.venv: no TLS registry for the hosts"; return 0; }
  # On the loopback link (this kernel has no dummy links): a local address, reached from
  # every host link as any of the root's addresses is.
  ip addr replace "$ip/32" dev lo
  STACKPORT_REGISTRY_TLS_ADDR=$REGISTRY_TLS STACKPORT_REGISTRY_CA=$CA "$HERE/registry.sh" >&2 ||
    { log "warning: the TLS registry on $REGISTRY_TLS did not start; pulls through it will fail"; return 0; }
  mkdir -p "/etc/docker/certs.d/$REGISTRY_TLS"
  cmp -s "$CA/ca.pem" "/etc/docker/certs.d/$REGISTRY_TLS/ca.crt" ||
    install -m 644 "$CA/ca.pem" "/etc/docker/certs.d/$REGISTRY_TLS/ca.crt"
}

ensure_dockerd() {
  local n=$1 dir=$RUN/h$n logf=/var/log/stackport-hosts-h$n.log
  if answers "$n" && [ -n "$(tls_flags "$n")" ] && ! listens_tls "$n"; then
    log "restarting dockerd of sp$n to add its TLS listener"
    stop_pid "$dir/docker.pid" 60
  fi
  answers "$n" && return 0
  if pid_alive "$dir/docker.pid"; then
    log "sp$n: dockerd $(cat "$dir/docker.pid") runs but does not answer yet"
  else
    log "starting dockerd for sp$n in netns $(netns "$n")"
    rm -f "$dir/docker.sock" "$dir/docker.pid"
    mkdir -p "$dir/exec"
    # setsid: the engine outlives whoever ran this script (a test session, a CI step).
    # shellcheck disable=SC2046  # the TLS flags are words
    nsenter --net="$(ns_path "$n")" setsid dockerd --config-file "$dir/daemon.json" \
      --host "unix://$dir/docker.sock" $(tls_flags "$n") --data-root "$LIB/h$n" --exec-root "$dir/exec" \
      --pidfile "$dir/docker.pid" --containerd-namespace "stackport-h$n" \
      --containerd-plugins-namespace "stackport-h$n-plugins" \
      </dev/null >>"$logf" 2>&1 9>&- &
  fi
  local start=$SECONDS
  for _ in $(seq 1 120); do
    answers "$n" && { log "sp$n answers after $((SECONDS - start)) s"; return 0; }
    sleep 0.5
  done
  tail -20 "$logf" >&2
  die "dockerd of sp$n did not answer on $(sock "$n"); see $logf"
}

print_host() {
  local n=$1
  echo "sp$n unix://$(sock "$n") $(host_ip "$n") $(block "$n")"
}

host_numbers() {
  local ns
  for ns in /var/run/netns/stackport-h*; do
    [ -e "$ns" ] && echo "${ns##*/stackport-h}"
  done | sort -n
}

# Sized volumes (docs/backends.md, "Disk limits") are made by a helper container of the
# volume tools image: copy it from the root engine when the host lacks it (a no-op after).
TOOLS_IMAGE=${STACKPORT_VOLUME_TOOLS_IMAGE:-stackport/debian:bookworm}
ensure_volume_tools() {
  local host=(docker -H "unix://$(sock "$1")")
  "${host[@]}" image inspect "$TOOLS_IMAGE" >/dev/null 2>&1 && return 0
  docker image inspect "$TOOLS_IMAGE" >/dev/null 2>&1 || {
    log "warning: no $TOOLS_IMAGE on the root engine (scripts/base-images.sh): sized volumes will fail on sp$1"
    return 0
  }
  docker save "$TOOLS_IMAGE" | "${host[@]}" load -q >/dev/null
}

up() {
  local count=${1:-2} n
  [[ $count =~ ^[0-9]+$ ]] && ((count >= 1 && count <= MAX_HOSTS)) ||
    die "host count must be 1..$MAX_HOSTS, not '$count'"
  require_tools
  curl -fsS --max-time 2 "http://$REGISTRY/v2/" >/dev/null 2>&1 ||
    log "warning: no registry answers on $REGISTRY (scripts/registry.sh); pulls will fail"
  root_rules
  ensure_registry_tls
  for n in $(seq 1 "$count"); do
    mkdir -p "$RUN/h$n" "$LIB/h$n"
    chmod 700 "$RUN" "$RUN/h$n"
    ensure_link "$n"
    write_config "$n"
    ensure_registry_forwarder "$n"
    ensure_tls "$n"
    ensure_dockerd "$n"
    host_rules "$n"
    ensure_volume_tools "$n"
  done
  for n in $(seq 1 "$count"); do print_host "$n"; done
}

stop_pid() {
  local pidfile=$1 wait=${2:-5} pid
  [ -s "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if running "$pid"; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((wait * 10))); do running "$pid" || break; sleep 0.1; done
    running "$pid" && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

down() {
  local numbers n
  if [ $# -gt 0 ]; then
    [[ $1 =~ ^[0-9]+$ ]] || die "host count must be a number, not '$1'"
    numbers=$(seq 1 "$1")
  else
    numbers=$(host_numbers)
  fi
  # live-restore is off: dockerd stops its containers (and its containerd) on the way out.
  # It takes some seconds to exit: all hosts at once.
  for n in $numbers; do
    log "stopping sp$n"
    stop_pid "$RUN/h$n/docker.pid" 60 &
  done
  wait
  for n in $numbers; do
    stop_pid "$RUN/h$n/registry-ns.pid"
    stop_pid "$RUN/h$n/registry-root.pid"
    rm -f "$RUN/h$n/registry.sock" "$RUN/h$n/docker.sock"
    ip link del "$(link_root "$n")" 2>/dev/null || true
    [ -e "/var/run/netns/$(netns "$n")" ] && ip netns del "$(netns "$n")"
  done
  [ -n "$(host_numbers)" ] || remove_root_rules
}

status() {
  local n
  for n in $(host_numbers); do answers "$n" && print_host "$n"; done
  return 0
}

[ "$(id -u)" = 0 ] || die "run as root (network namespaces, iptables)"
mkdir -p "$RUN"
exec 9>"$RUN/.hosts.lock"
flock -w 300 9
case ${1:-} in
  up) shift; up "$@" ;;
  down) shift; down "$@" ;;
  status) status ;;
  *) die "usage: $0 up [N] | down [N] | status" ;;
esac
