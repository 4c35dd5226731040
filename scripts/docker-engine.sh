#!/usr/bin/env bash
# Start a real Docker Engine (Debian's docker.io) when none answers, with enough address
# pools for one network per project and live-restore. No systemd here: dockerd runs in the
# background and logs to /var/log/stackport-dockerd.log.
set -euo pipefail
SOCK=/var/run/docker.sock

if ! command -v dockerd >/dev/null 2>&1; then
  echo "installing docker.io"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker.io
fi

mkdir -p /etc/docker
if [ ! -f /etc/docker/daemon.json ] || ! grep -q 10.201.0.0 /etc/docker/daemon.json; then
  cat > /etc/docker/daemon.json <<'JSON'
{
  "live-restore": true,
  "default-address-pools": [
    {"base": "10.201.0.0/16", "size": 24},
    {"base": "10.202.0.0/16", "size": 24}
  ],
  "insecure-registries": ["127.0.0.1:5000"],
  "log-driver": "json-file",
  "log-opts": {"max-size": "10m", "max-file": "3"}
}
JSON
fi

# The egress policy (scripts/host-firewall.sh, docs/security.md "Network egress"): customer
# containers (project networks 10.64.0.0/10) never reach services on the host itself
# (database, broker, registry, Docker API, the admin APIs), whatever address those listen
# on, nor other stacks, private, link-local or the host's LAN addresses; the internet only
# from stacks whose plan allows it. Replies to connections the host opened (the edge
# router's) still pass. STACKPORT_FIREWALL_BLOCK: more ranges to block (comma-separated).
protect_host() {
  local lan block
  lan=$(ip -4 route show default 2>/dev/null | awk '{print $5; exit}')
  block=$( { [ -z "$lan" ] || ip -4 route show dev "$lan" scope link proto kernel | awk '{print $1}'
    [ -z "${STACKPORT_FIREWALL_BLOCK:-}" ] || tr , '\n' <<<"$STACKPORT_FIREWALL_BLOCK"; } | paste -sd, -)
  "$(dirname "$0")/host-firewall.sh" apply --tenants 10.64.0.0/10 ${block:+--block "$block"}
  # Earlier versions kept this in iptables.
  iptables -D INPUT -s 10.64.0.0/10 -m conntrack ! --ctstate ESTABLISHED,RELATED -j DROP 2>/dev/null || true
}

if docker -H "unix://$SOCK" version >/dev/null 2>&1; then
  protect_host
  exit 0
fi
echo "starting dockerd"
rm -f /var/run/docker.pid
nohup dockerd --host "unix://$SOCK" >/var/log/stackport-dockerd.log 2>&1 &
for _ in $(seq 1 60); do
  docker -H "unix://$SOCK" version >/dev/null 2>&1 && { protect_host; exit 0; }
  sleep 0.5
done
echo "error: dockerd did not answer; see /var/log/stackport-dockerd.log" >&2
tail -20 /var/log/stackport-dockerd.log >&2
exit 1
