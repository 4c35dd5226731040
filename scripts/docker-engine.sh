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

# Customer containers (project networks 10.64.0.0/10) never reach services on the host
# itself (database, broker, registry, the admin APIs), whatever address those listen on;
# replies to connections the host opened (the edge router's) still pass.
protect_host() {
  local rule=(INPUT -s 10.64.0.0/10 -m conntrack ! --ctstate ESTABLISHED,RELATED -j DROP)
  iptables -C "${rule[@]}" 2>/dev/null || iptables -I "${rule[@]}"
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
