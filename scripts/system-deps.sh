#!/usr/bin/env bash
# Install the Debian packages Stackport needs, only those that are missing.
#   scripts/system-deps.sh run    what `make run` needs
#   scripts/system-deps.sh test   what `make test` needs (adds PostgreSQL, Redis, Chromium)
set -euo pipefail
want=(python3 python3-venv python3-dev nodejs npm docker.io nftables debootstrap docker-registry apache2-utils libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core restic pebble dnsmasq-base openssl haproxy)
if [ "${1:-run}" = test ]; then
  want+=(postgresql redis-server chromium busybox-static openssh-server)
fi
missing=()
for pkg in "${want[@]}"; do
  # A tool already on PATH (from pyenv, nvm, ...) counts as present.
  case "$pkg" in
    nodejs) command -v node >/dev/null 2>&1 && continue ;;
    npm) command -v npm >/dev/null 2>&1 && continue ;;
    postgresql) command -v pg_ctlcluster >/dev/null 2>&1 && continue ;;
    redis-server) command -v redis-server >/dev/null 2>&1 && continue ;;
    chromium) [ -x /usr/bin/chromium ] && continue ;;
    docker.io) command -v dockerd >/dev/null 2>&1 && continue ;;
  esac
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Debian's haproxy package enables its own service (/etc/haproxy/haproxy.cfg): Stackport runs
# HAProxy as a process of its own (scripts/haproxy.sh), so the distro's stays off.
if [[ " ${want[*]} " == *" haproxy "* ]] && [ -d /run/systemd/system ] &&
  systemctl is-enabled --quiet haproxy.service 2>/dev/null; then
  systemctl disable --now haproxy.service
fi
