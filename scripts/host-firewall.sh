#!/usr/bin/env bash
# Stackport's egress policy on a Docker host: one nftables table of its own ("inet
# stackport"), loaded in one transaction (atomic) and independent of the rules Docker
# writes (docs/security.md, "Network egress"; docs/decisions.md says why a table of its own).
#
#   scripts/host-firewall.sh apply  [OPTIONS]   load (or replace) the table; idempotent
#   scripts/host-firewall.sh render [OPTIONS]   print the ruleset (for /etc/nftables.d/)
#   scripts/host-firewall.sh remove [--netns NAME]
# OPTIONS
#   --tenants CIDR[,CIDR]  addresses of customer containers (required; the backend's
#                          project networks: 10.64.0.0/10 on a stand-alone host)
#   --edge CIDR[,CIDR]     may open connections to containers from outside this host
#                          (the edge router when it runs elsewhere); the host itself always may
#   --block CIDR[,CIDR]    also never reachable by containers, whatever their plan (the
#                          operator's LAN and public addresses of other Docker hosts)
#   --fabric               routed hosts (docs/backends.md, "Several Docker hosts"): a
#                          container may also reach the same stack on other hosts (same
#                          third octet), and allowed egress is masqueraded (--out)
#   --out IFACE            the interface egress leaves by, for --fabric (default eth0)
#   --netns NAME           apply inside network namespace NAME (/var/run/netns/NAME)
#
# What a container may do (every other new connection from or to it is dropped):
#   - talk to its own stack network (same bridge), and with --fabric to the same stack on
#     another host;
#   - be reached by the host itself (the edge router on loopback) and by --edge;
#   - reach the internet (any address outside the blocked set) only from a network whose
#     bridge name starts with "spe-": the backend names a stack's bridge "spe-..." when the
#     stack's egress policy allows the internet, "spn-..." otherwise.
# Never reachable: the host's own addresses (every port: database, broker, Docker API,
# registry, Caddy admin, the portal), private ranges (RFC 1918, CGNAT), link-local
# (169.254.0.0/16, cloud metadata), loopback, multicast and reserved ranges, other
# stacks. IPv6 from a stack network is dropped (stack networks are IPv4 only).
set -euo pipefail

die() { echo "error: $*" >&2; exit 1; }

# Ranges no container reaches, whatever its plan.
BLOCKED=(0.0.0.0/8 10.0.0.0/8 100.64.0.0/10 127.0.0.0/8 169.254.0.0/16 172.16.0.0/12
  192.0.0.0/24 192.168.0.0/16 198.18.0.0/15 224.0.0.0/3)

tenants="" edge="" block="" fabric=0 out=eth0 netns=""

cidrs() {
  local value=$1 item
  [ -n "$value" ] || die "empty address list"
  IFS=, read -ra items <<<"$value"
  for item in "${items[@]}"; do
    [[ $item =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}(/[0-9]{1,2})?$ ]] || die "not an IPv4 address or CIDR: '$item'"
  done
  echo "$value"
}

parse() {
  while [ $# -gt 0 ]; do
    case $1 in
      --tenants) tenants=$(cidrs "${2:-}"); shift 2 ;;
      --edge) edge=$(cidrs "${2:-}"); shift 2 ;;
      --block) block=$(cidrs "${2:-}"); shift 2 ;;
      --fabric) fabric=1; shift ;;
      --out) [[ ${2:-} =~ ^[A-Za-z0-9_.-]{1,15}$ ]] || die "bad interface name"; out=$2; shift 2 ;;
      --netns) [[ ${2:-} =~ ^[A-Za-z0-9_.-]+$ ]] || die "bad namespace name"; netns=$2; shift 2 ;;
      *) die "unknown option '$1' (see the header of $0)" ;;
    esac
  done
}

nft_() {
  if [ -n "$netns" ]; then
    nsenter --net="/var/run/netns/$netns" nft "$@"
  else
    nft "$@"
  fi
}

render() {
  [ -n "$tenants" ] || die "--tenants is required"
  local blocked
  blocked=$(IFS=,; echo "${BLOCKED[*]}")
  [ -z "$block" ] || blocked="$blocked,$block"
  cat <<NFT
# Stackport egress policy (scripts/host-firewall.sh). Replaced whole on every apply.
table inet stackport
delete table inet stackport
table inet stackport {
  set tenants {
    type ipv4_addr; flags interval; auto-merge
    elements = { ${tenants//,/, } }
  }
  set blocked {
    type ipv4_addr; flags interval; auto-merge
    elements = { ${blocked//,/, } }
  }
  set edge {
    type ipv4_addr; flags interval; auto-merge
$( [ -z "$edge" ] || echo "    elements = { ${edge//,/, } }" )
  }
NFT
  if ((fabric)); then
    local elements=() s
    for s in $(seq 1 254); do elements+=("0.0.$s.0 . 0.0.$s.0"); done
    cat <<NFT
  # Same stack on any routed host: the same third octet (docs/backends.md).
  set same_stack {
    type ipv4_addr . ipv4_addr
    elements = { $(IFS=,; echo "${elements[*]}" | sed 's/,/, /g') }
  }
NFT
  fi
  cat <<NFT

  # Before Docker's filter chains (priority 0): a drop here is final whatever Docker's
  # own rules say, or how far it is through rewriting them.
  chain forward {
    type filter hook forward priority filter - 10; policy accept;
    iifname "spe-*" meta nfproto ipv6 drop
    iifname "spn-*" meta nfproto ipv6 drop
    oifname "spe-*" meta nfproto ipv6 drop
    oifname "spn-*" meta nfproto ipv6 drop
    iifname "spe-*" ip saddr != @tenants drop
    iifname "spn-*" ip saddr != @tenants drop
    ct state established,related accept
    ip saddr @tenants jump from_tenant
    ip daddr @tenants jump to_tenant
  }

  chain from_tenant {
    # The same stack network on this host (routed back out of the bridge it came in by).
    fib daddr . iif oif exists accept
$( ((fabric)) && echo "    ip daddr @tenants ip saddr & 0.0.255.0 . ip daddr & 0.0.255.0 @same_stack accept" )
    ip daddr @tenants reject with icmpx type admin-prohibited
    ip daddr @blocked reject with icmpx type admin-prohibited
    # The plan allows the internet.
    iifname "spe-*" accept
    # Refused at once rather than dropped: applications fail fast instead of hanging.
    reject with icmpx type admin-prohibited
  }

  chain to_tenant {
    ip saddr @edge accept
    drop
  }

  # Nothing on the host itself is for containers: only replies to what the host opened.
  chain input {
    type filter hook input priority filter - 10; policy accept;
    iifname "spe-*" meta nfproto ipv6 drop
    iifname "spn-*" meta nfproto ipv6 drop
    ip saddr @tenants ct state established,related accept
    ip saddr @tenants reject with icmpx type admin-prohibited
  }
NFT
  if ((fabric)); then
    cat <<NFT

  # Routed stack networks are not masqueraded by Docker: allowed egress leaves with the
  # host's address (only what the forward chain let through gets here).
  chain postrouting {
    type nat hook postrouting priority srcnat + 10; policy accept;
    ip saddr @tenants ip daddr != @tenants oifname "$out" masquerade
  }
NFT
  fi
  echo "}"
}

ensure_nft() {
  command -v nft >/dev/null 2>&1 && return 0
  echo "installing nftables" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nftables >&2
}

[ "$(id -u)" = 0 ] || [ "${1:-}" = render ] || die "run as root (nftables)"
command=${1:-}
shift || true
parse "$@"
case $command in
  render) render ;;
  apply)
    ensure_nft
    rules=$(render)
    nft_ -f - <<<"$rules"
    ;;
  remove)
    ensure_nft
    nft_ delete table inet stackport 2>/dev/null || true
    ;;
  *) die "usage: $0 apply|render|remove [OPTIONS] (see the header)" ;;
esac
