#!/usr/bin/env bash
# Build the Debian base images every curated image starts from (no public registry is
# reachable): debootstrap --variant=minbase, imported as stackport/debian:<release>.
# Cached: an image whose label matches this script's hash and the release is reused.
#   scripts/base-images.sh [bookworm trixie ...]
set -euo pipefail
cd "$(dirname "$0")/.."
releases=("$@")
[ ${#releases[@]} -gt 0 ] || releases=(bookworm trixie)
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

command -v debootstrap >/dev/null 2>&1 || \
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap

script_hash=$(sha256sum "$0" | cut -c1-16)
for release in "${releases[@]}"; do
  tag="stackport/debian:$release"
  want="$script_hash-$release"
  have=$(docker image inspect "$tag" --format '{{ index .Config.Labels "org.stackport.base-hash" }}' 2>/dev/null || true)
  if [ "$have" = "$want" ]; then
    echo "base image $tag is up to date"
    continue
  fi
  echo "building base image $tag (debootstrap $release)"
  root=$(mktemp -d /var/tmp/stackport-debootstrap-XXXXXX)
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase "$release" "$root" "$MIRROR" >/var/log/stackport-debootstrap-$release.log 2>&1 || {
    echo "error: debootstrap $release failed; see /var/log/stackport-debootstrap-$release.log" >&2; exit 1; }
  # Small and predictable: no docs or caches, apt never asks questions.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
  printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/locale/*\n' \
    > "$root/etc/dpkg/dpkg.cfg.d/01-stackport-nodoc"
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' > "$root/etc/apt/apt.conf.d/01-stackport"
  tar -C "$root" -c . | docker import \
    --change "LABEL org.stackport.base-hash=$want" \
    --change 'ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null
  rm -rf "$root"
  trap - EXIT
  echo "built $tag"
done
