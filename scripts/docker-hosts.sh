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
#
# Container network ("fabric"), see docs/backends.md, "Several Docker hosts":
#   10.224.0.0/11 holds every stack container. Host N owns 10.(224+N).0.0/16; stack S
#   (1..254, one number per stack across the cluster) gets 10.(224+N).S.0/24 on host N
#   as a plain bridge network without masquerading. The root namespace plays the LAN: it
#   routes each host's /16 to that host and forwards only container-to-container
#   traffic between hosts. Each host's DOCKER-USER chain lets a container talk only to
#   the same third octet (same stack, any host: one cBPF match) and lets the root
#   namespace (the edge, 10.199.N.1) in; everything else from or to a stack container
#   is dropped: other stacks, other hosts' own addresses, the root namespace's services,
#   the internet. The rules are static: the backend only creates networks.
# Swarm overlay networks were tried too: plain VXLAN overlays work here, encrypted ones do
# not (no ESP in this kernel: "Failed Adding fSA{... rfc4106(gcm(aes)) ...}: function not
# implemented"), IPVS is missing (no service VIPs or routing mesh), and the edge cannot
# reach an overlay address without published ports. docs/backends.md has the comparison.
set -euo pipefail

RUN=/run/stackport
LIB=/var/lib/stackport/hosts
REGISTRY=${STACKPORT_HOSTS_REGISTRY:-127.0.0.1:5000}
POOL=10.224.0.0/11
MAX_HOSTS=31
# cBPF (xt_bpf runs it on the IPv4 header): match when the third octets of source (byte
# 14) and destination (byte 18) are equal, i.e. both ends belong to the same stack.
SAME_STACK_BPF='6,48 0 0 14,7 0 0 0,48 0 0 18,29 0 1 0,6 0 0 1,6 0 0 0'

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

# Root namespace: forward container-to-container traffic between hosts, nothing else;
# accept nothing from a host's link but replies to connections the root opened (the edge).
root_rules() {
  iptables -w -N STACKPORT-HOSTS 2>/dev/null || true
  iptables -w -N STACKPORT-HOSTS-IN 2>/dev/null || true
  iptables -w -F STACKPORT-HOSTS
  iptables -w -A STACKPORT-HOSTS -i sp-h+ -o sp-h+ -s "$POOL" -d "$POOL" -j ACCEPT
  iptables -w -A STACKPORT-HOSTS -i sp-h+ -j DROP
  iptables -w -A STACKPORT-HOSTS -o sp-h+ -j DROP
  iptables -w -F STACKPORT-HOSTS-IN
  iptables -w -A STACKPORT-HOSTS-IN -i sp-h+ -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
  iptables -w -A STACKPORT-HOSTS-IN -i sp-h+ -j DROP
  ensure_rule root filter FORWARD -j STACKPORT-HOSTS
  ensure_rule root filter INPUT -j STACKPORT-HOSTS-IN
  [ "$(sysctl -n net.ipv4.ip_forward)" = 1 ] || sysctl -qw net.ipv4.ip_forward=1
}

remove_root_rules() {
  iptables -w -D FORWARD -j STACKPORT-HOSTS 2>/dev/null || true
  iptables -w -D INPUT -j STACKPORT-HOSTS-IN 2>/dev/null || true
  for chain in STACKPORT-HOSTS STACKPORT-HOSTS-IN; do
    iptables -w -F "$chain" 2>/dev/null || true
    iptables -w -X "$chain" 2>/dev/null || true
  done
}

# Inside host N, after its dockerd created DOCKER-USER (which dockerd keeps first in
# FORWARD and never flushes): rewritten whole on every "up".
host_rules() {
  local n=$1
  in_ns "$n" iptables -w -P FORWARD DROP
  in_ns "$n" iptables -w -F DOCKER-USER
  local rules=(
    "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    "-s $POOL -d $POOL -m bpf --bytecode SAME_STACK -j ACCEPT"
    "-i eth0 -s $(root_ip "$n") -d $POOL -j ACCEPT"
    "-s $POOL -j DROP"
    "-d $POOL -j DROP"
    "-j RETURN"
  )
  local rule
  for rule in "${rules[@]}"; do
    # shellcheck disable=SC2086  # word splitting of the rule text is wanted
    set -- $rule
    local args=()
    for word in "$@"; do [ "$word" = SAME_STACK ] && args+=("$SAME_STACK_BPF") || args+=("$word"); done
    in_ns "$n" iptables -w -A DOCKER-USER "${args[@]}"
  done
  # Nothing on the host itself (its gateway addresses) is for containers.
  in_ns "$n" iptables -w -N STACKPORT-INPUT 2>/dev/null || true
  in_ns "$n" iptables -w -F STACKPORT-INPUT
  in_ns "$n" iptables -w -A STACKPORT-INPUT -s "$POOL" -j DROP
  ensure_rule "$n" filter INPUT -j STACKPORT-INPUT
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

ensure_dockerd() {
  local n=$1 dir=$RUN/h$n logf=/var/log/stackport-hosts-h$n.log
  answers "$n" && return 0
  if pid_alive "$dir/docker.pid"; then
    log "sp$n: dockerd $(cat "$dir/docker.pid") runs but does not answer yet"
  else
    log "starting dockerd for sp$n in netns $(netns "$n")"
    rm -f "$dir/docker.sock" "$dir/docker.pid"
    mkdir -p "$dir/exec"
    # setsid: the engine outlives whoever ran this script (a test session, a CI step).
    nsenter --net="$(ns_path "$n")" setsid dockerd --config-file "$dir/daemon.json" \
      --host "unix://$dir/docker.sock" --data-root "$LIB/h$n" --exec-root "$dir/exec" \
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
  for n in $(seq 1 "$count"); do
    mkdir -p "$RUN/h$n" "$LIB/h$n"
    chmod 700 "$RUN" "$RUN/h$n"
    ensure_link "$n"
    write_config "$n"
    ensure_registry_forwarder "$n"
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
