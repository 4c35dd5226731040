"""The Docker backend: stacks as hardened containers on Docker engines (Docker SDK only).

Per stack (one project environment): a bridge network of its own with a subnet derived
from the stack key (other projects' containers cannot reach it), named volumes, and one
container per replica, every one started exactly as docs/security.md lists. Replicas of public
components get fixed *slot* addresses on the network, so the edge router's upstreams never
change when containers are replaced. Names derive from the server-generated stack key.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import re
import secrets
import socket
import tarfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import docker
import requests
from django.conf import settings
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from stacks.backends import build_proxy
from stacks.backends.base import (
    Backend,
    BackendError,
    BuildJob,
    ComponentSpec,
    Drain,
    EngineTLS,
    HostFacts,
    HostRecord,
    Observed,
    ReplicaState,
    ResourceSample,
    StackSpec,
    VolumeSpec,
    VolumeUsage,
)

KEY_RE = re.compile(r"^[a-z][a-z0-9-]{1,40}$")
RELEASE_ID_RE = re.compile(r"[a-z0-9]{1,32}")  # a release's content id (Release.content_id)
# The only engine addresses Stackport connects to, whatever a host row says (admin edits).
ENGINE_URL_RE = re.compile(r"(unix:///[\w./-]+|tcp://[\w.-]+:\d{1,5}|ssh://[\w.-]+@[\w.-]+(:\d{1,5})?)")
LABEL = "org.stackport.stack"
HEALTH_TIMEOUT = 180
# Project networks come from 10.64.0.0/10 (16,384 /24s), apart from the engine's own pools.
PROJECT_SUPERNET = ipaddress.ip_network("10.64.0.0/10")
NETWORK_CREATE_ATTEMPTS = 8  # free /24s tried when others are taken at the same moment
FIRST_SLOT = 10  # .10, .11, ... are replica slots; lower addresses are the gateway and spares
COLORS = ("a", "b")  # blue/green: a changed stateless component starts in the other colour
MAX_REPLICAS = 10  # per colour; settings.STACKPORT_MAX_REPLICAS may not exceed it
SLOTS_PER_COMPONENT = len(COLORS) * MAX_REPLICAS  # 12 components fit in a /24
EDGE_PICKUP = 2.5  # seconds: more than two of the edge's 1 s active health checks
DNS_DRAIN = 11.0  # seconds an internal component's old colour keeps serving (nginx resolver valid=10s)
STOP_TIMEOUT = 10  # seconds between the image's graceful STOPSIGNAL and SIGKILL
CRASH_LIMIT = 3  # restarts while starting before a container counts as failed
EXPORT_LIMIT = 64 << 20  # bytes a migration's export may hand over (definitions, not data)
DUMP_FILE = ".stackport-migrate.dump"  # where the export lands on the new version's volume
BRIDGE_NAME = "com.docker.network.bridge.name"
COMPONENT = "org.stackport.component"
INDEX = "org.stackport.index"
COLOR = "org.stackport.color"
SPEC = "org.stackport.spec"
VERSION = "org.stackport.version"
HELPER = "org.stackport.helper"
COMPLETE = "org.stackport.complete"
SIZE = "org.stackport.size-gb"  # a volume held to this size (a fixed-size filesystem image)
# Disk limits (docs/backends.md, "Disk limits"): a sized volume is an ext4 filesystem image
# on its host, attached to a loop device by a helper container of the volume tools image and
# mounted by the engine's local driver through a link under the host's /dev (devtmpfs: gone
# after a reboot, so a stale loop number can never mount another volume's image).
VOLUME_LINKS = "/dev/stackport-volumes"
ATTACH_SCRIPT = r"""set -eu
img="/images/$1.img"; link="/dev/stackport-volumes/$2"
if [ ! -f "$img" ]; then
  rm -f "$img.new"
  truncate -s "$3G" "$img.new"
  mkfs.ext4 -q -F -m 0 -E nodiscard -L stackport "$img.new"
  # Empty, like a fresh volume: the engine then copies the image's directory into it.
  debugfs -w -R "rmdir lost+found" "$img.new" >/dev/null 2>&1
  mv "$img.new" "$img"
fi
dev=$(losetup -j "$img" -n -O NAME | head -n 1)
[ -n "$dev" ] || dev=$(losetup -f --show "$img")
mkdir -p /dev/stackport-volumes
ln -sfn "$dev" "$link.new" && mv -f "$link.new" "$link"
# Smaller than asked (a bigger plan): say so; the backend grows it (GROW_SCRIPT).
[ "$(stat -c %s "$img")" -ge "$(($3 * 1073741824))" ] || echo "stackport:grow"
"""
# Offline (ext4's online resize needs CAP_SYS_RESOURCE, which engines may not have): the
# backend has stopped the containers that use the volume, so the engine has unmounted it.
GROW_MARK = "stackport:grow"
GROW_SCRIPT = r"""set -eu
img="/images/$1.img"
dev=$(losetup -j "$img" -n -O NAME | head -n 1)
truncate -s "$2G" "$img"
[ -z "$dev" ] || losetup -c "$dev"
rc=0; e2fsck -f -y "${dev:-$img}" >/dev/null 2>&1 || rc=$?
[ "$rc" -le 1 ] || { echo "e2fsck found errors it could not fix ($rc)"; exit 1; }
resize2fs "${dev:-$img}" 2>&1
"""
RELEASE_SCRIPT = r"""set -u
for name in "$@"; do
  img="/images/$name.img"
  for dev in $(losetup -j "$img" -n -O NAME 2>/dev/null); do losetup -d "$dev" || true; done
  rm -f "$img" "$img.new" "/dev/stackport-volumes/$ENGINE-$name"
done
"""
USAGE_SCRIPT = r"""for i in "$@"; do
  case "$i" in
    s*) df -B1 -P "/v/${i#s}" | tail -n 1 | { read -r _ total used _; echo "$i $total $used"; } ;;
    *) echo "$i - $(du -sxb "/v/$i" | cut -f1)" ;;
  esac
done
"""


def _wrap(exc: Exception, what: str) -> BackendError:
    if isinstance(exc, APIError):
        status = exc.status_code or 500
        return BackendError(
            f"{what}: {exc.explanation or exc}", permanent=400 <= status < 500 and status != 409
        )
    return BackendError(f"{what}: {exc}", permanent=False)


def subnet_candidates(number: int) -> Iterator[ipaddress.IPv4Network]:
    """The /24s of the project supernet, starting at one derived from the stack's number."""
    count = 2 ** (24 - PROJECT_SUPERNET.prefixlen)
    for step in range(count):
        index = (number + step) % count
        yield ipaddress.IPv4Network((int(PROJECT_SUPERNET.network_address) + (index << 8), 24))


def bridge_name(spec: StackSpec) -> str:
    """The stack network's bridge: the hosts' egress rules (scripts/host-firewall.sh) let
    "spe-..." bridges reach the internet and nothing else; at most 15 characters."""
    prefix = "spe-" if spec.egress.internet else "spn-"
    return prefix + hashlib.sha256(spec.key.encode()).hexdigest()[:11]


def subnet_of(state: dict[str, Any]) -> ipaddress.IPv4Network:
    if not state.get("subnet"):
        raise BackendError("the stack has no network yet", permanent=False)
    return ipaddress.IPv4Network(state["subnet"])


class HostPlacement:
    """Where a stack's replicas go on ``self.hosts`` (a list of ``HostRecord``), and the
    addresses they get: the Docker backend's placement, which the in-memory backend shares
    so that names, homes and slot addresses match."""

    hosts: list[HostRecord]

    def place(self, spec: StackSpec, state: dict[str, Any]) -> str:
        """The stack's home host: its data services and single replicas live there, kept
        once chosen (its volumes are there). A new stack's home is never a draining host."""
        if state.get("host"):
            return str(state["host"])
        placeable = [h for h in self.hosts if not h.drain]
        if not placeable:
            raise BackendError("no active host to place the stack on", permanent=False)
        return str(placeable[0].name)

    @property
    def multi_host(self) -> bool:
        """Hosts with an address pool each (scripts/docker-hosts.sh, docs/backends.md):
        replicas of the public component spread over them, routed between hosts. One such
        host alone (the others lost or draining) still uses its pool: only the pool's
        addresses are routed to it from the edge."""
        return bool(self.hosts) and all(h.pool for h in self.hosts)

    def host_of(self, spec: StackSpec, state: dict[str, Any], comp: ComponentSpec, index: int) -> str:
        """Where replica ``index`` of ``comp`` runs: the public component's replicas round-
        robin over the hosts, starting at the home host; everything else at home."""
        home = self.place(spec, state)
        if not self.multi_host or comp.stateful or not comp.public_port or shares_volumes(comp):
            return home
        # Stable, whatever order placement prefers; nothing new on a draining host.
        names = sorted(h.name for h in self.hosts if not h.drain or h.name == home)
        start = names.index(home) if home in names else 0
        return names[(start + index) % len(names)]

    def _pool(self, host: str) -> ipaddress.IPv4Network | None:
        pool = next((h.pool for h in self.hosts if h.name == host), None)
        return ipaddress.IPv4Network(pool) if pool else None

    def subnet(self, state: dict[str, Any], host: str) -> ipaddress.IPv4Network:
        pool = self._pool(host) if self.multi_host else None
        if pool is None:
            return subnet_of(state)
        if not state.get("number"):
            raise BackendError("the stack has no network number yet", permanent=False)
        return ipaddress.IPv4Network((int(pool.network_address) + (int(state["number"]) << 8), 24))

    def hosts_of(self, state: dict[str, Any]) -> list[str]:
        home = str(state.get("host") or "")
        others = [str(h) for h in state.get("hosts") or [] if h and h != home]
        return ([home] if home else []) + sorted(set(others))

    def rehome(self, state: dict[str, Any], host: str) -> dict[str, Any]:
        # Its network (and subnet) are made there. On routed hosts the stack keeps its
        # number: chosen free on every host, and its replicas spread there already use it.
        return {"host": host, **({"number": state["number"]} if state.get("number") else {})}


class DockerBackend(HostPlacement, Backend):
    """Runs stacks on Docker engines. ``hosts``: [{"name": ..., "url": ...}], the active
    hosts of the stack's region and kernel line, in the order placement prefers them."""

    def __init__(
        self,
        hosts: list[HostRecord] | None = None,
        edge_pickup: float = EDGE_PICKUP,
        dns_drain: float = DNS_DRAIN,
    ) -> None:
        if not hosts:
            raise BackendError("no Docker host is available in this region", permanent=False)
        for host in hosts:
            if not ENGINE_URL_RE.fullmatch(host.url):
                message = f"Docker host {host.name} has an address Stackport does not use"
                raise BackendError(message, permanent=True)
        self.hosts = hosts
        self.edge_pickup = edge_pickup
        self.dns_drain = dns_drain
        self._clients: dict[str, docker.DockerClient] = {}

    # --- engines -------------------------------------------------------------------------------
    def client(self, host: str | None = None) -> docker.DockerClient:
        host = host or self.hosts[0].name
        if host not in self._clients:
            record = next((h for h in self.hosts if h.name == host), None)
            if record is None:
                raise BackendError(f"Docker host {host!r} is not available", permanent=False)
            self._clients[host] = engine_client(record.url, timeout=120, tls=record.tls)
        return self._clients[host]

    # --- apply ---------------------------------------------------------------------------------
    def apply(
        self, spec: StackSpec, state: dict[str, Any], log: Any = print, drain: Drain | None = None
    ) -> dict[str, Any]:
        """Converge to ``spec``. A stateless component whose spec changed goes blue/green:
        the new replicas start in the other colour's slots, and the old ones are removed
        only once every new one is healthy (public ones after ``drain`` of their upstream
        addresses returned: the edge sends them nothing new and their requests finished);
        if one is not, the new ones are removed, the old keep serving and BackendError says
        why. Stateful components are replaced in
        place (their volumes move to the new container). Tiers start in order (data
        services, then internal services, then the public one), each healthy first."""
        if not KEY_RE.match(spec.key):
            raise BackendError(f"invalid stack key {spec.key!r}", permanent=True)
        home = self.place(spec, state)
        new_state: dict[str, Any] = {"host": home}
        if self.multi_host:
            new_state["number"] = state.get("number") or self._free_number(spec)
        try:
            self._ensure_network(home, spec, new_state)  # also when stopped: the edge keeps its slots
            existing = self._existing(spec.key)
            wanted_names = {c.name for c in spec.components}
            for _host, container in existing:  # components no longer in the spec
                if container.labels.get(COMPONENT) not in wanted_names:
                    log(f"removing {container.name} (component removed)")
                    self._remove_container(container)
            internal_names = {c.name for c in spec.components if not c.public_port}
            started: dict[str, list[str]] = {}
            retire: list[Any] = []
            targets: dict[str, str] = {}  # component -> the colour it runs in after this apply
            failed = ""
            tiers = [
                [c for c in spec.components if c.stateful],
                [c for c in spec.components if not c.stateful and not c.public_port],
                [c for c in spec.components if not c.stateful and c.public_port],
            ]
            # Nothing of the stack runs yet (a first deploy, a start after a stop): no old
            # version to protect, so every tier starts at once and only the waits stay in
            # order. Otherwise each tier starts once the one before it is healthy, so a new
            # public replica never sees a half-started internal one.
            at_once = not existing
            waits: list[dict[str, list[str]]] = []
            for tier in tiers:
                tier_started: dict[str, list[str]] = {}
                for comp in tier:
                    mine = [(h, c) for h, c in existing if c.labels.get(COMPONENT) == comp.name]
                    color, new, old = self._converge_component(spec, new_state, comp, mine, targets, log)
                    targets[comp.name] = color
                    for host, names in new.items():
                        tier_started.setdefault(host, []).extend(names)
                        started.setdefault(host, []).extend(names)
                    retire += old
                waits.append(tier_started)
                if not at_once:
                    failed = self._wait_healthy_on(spec.key, tier_started, log)
                    if failed:
                        break
            if at_once:
                for tier_started in waits:
                    failed = self._wait_healthy_on(spec.key, tier_started, log)
                    if failed:
                        break
            if failed:
                if retire:  # blue/green: the old colour is still serving; drop the new one
                    for host, names in started.items():
                        for container in self._containers(self.client(host), spec.key):
                            if container.name in names:
                                self._remove_container(container)
                raise BackendError(f"not healthy: {failed}", permanent=True)  # a verdict on the version
            if retire:
                # The edge's active check finds the new slots; clients inside the stack that
                # cache DNS answers (nginx: 10 s) move to the new addresses of an internal one.
                internal = [c for c in retire if c.labels.get(COMPONENT) in internal_names]
                for container in internal:
                    self._unpublish(spec.key, container, log)
                time.sleep(max(self.edge_pickup, self.dns_drain if internal else 0))
                leaving = self._public_upstreams(spec, new_state, retire)
                if drain is not None and leaving:
                    serving = [  # the public replicas of the colour each runs in now
                        f"{self.slot_address(spec, new_state, c, targets[c.name], i)}:{c.public_port}"
                        for c in spec.components
                        if c.public_port
                        for i in range(c.replicas)
                    ]
                    log(f"draining {len(leaving)} public replica(s) on the edge")
                    drain(leaving, serving)
                for container in retire:
                    log(f"draining and removing {container.name}")
                    self._stop_container(container)
                    self._remove_container(container)
        except (APIError, DockerException) as exc:
            raise _wrap(exc, f"applying {spec.key}") from exc
        if spec.running:  # where the replicas went (no engine call: the same rule that put them)
            used = {self.host_of(spec, new_state, c, i) for c in spec.components for i in range(c.replicas)}
            new_state["hosts"] = sorted(used - {home})
        return new_state

    def _public_upstreams(self, spec: StackSpec, state: dict[str, Any], containers: list[Any]) -> list[str]:
        """The edge's upstream addresses (``upstreams``) of those of ``containers`` that are
        replicas of the public component."""
        public = {comp.name: comp for comp in spec.components if comp.public_port}
        found = []
        for container in containers:
            comp = public.get(container.labels.get(COMPONENT, ""))
            color, index = container.labels.get(COLOR), int(container.labels.get(INDEX, -1))
            if comp is not None and color in COLORS and 0 <= index < MAX_REPLICAS:
                # Its own address (a replica moving off a host has the old host's), else its slot.
                networks = (container.attrs.get("NetworkSettings") or {}).get("Networks") or {}
                address = (networks.get(f"sp-{spec.key}") or {}).get("IPAddress")
                address = address or self.slot_address(spec, state, comp, color, index)
                found.append(f"{address}:{comp.public_port}")
        return found

    def _existing(self, key: str) -> list[tuple[str, Any]]:
        """Every container of the stack on every host: one list call per host."""
        found = []
        for host in self.hosts:
            found += [(host.name, c) for c in self._containers(self.client(host.name), key)]
        return found

    def _free_number(self, spec: StackSpec) -> int:
        """A stack number (third octet) no stack uses on any host, from one derived from the
        stack's id: every host gives the stack the same /24 of its own pool."""
        used = set()
        for host in self.hosts:
            pool = self._pool(host.name)
            for network in self.client(host.name).networks.list():
                for config in (network.attrs.get("IPAM") or {}).get("Config") or []:
                    subnet = ipaddress.ip_network(config.get("Subnet") or "0.0.0.0/32", strict=False)
                    if pool and subnet.subnet_of(pool):  # type: ignore[arg-type]
                        used.add(int(subnet.network_address) >> 8 & 0xFF)
        for step in range(254):
            number = (spec.number + step) % 254 + 1
            if number not in used:
                return number
        raise BackendError("no free stack network number left on these hosts", permanent=False)

    def _peers(
        self, spec: StackSpec, state: dict[str, Any], host: str, targets: dict[str, str]
    ) -> dict[str, str]:
        """Service names of components whose first replica runs on another host, to their
        addresses (Docker's DNS answers for its own host only)."""
        peers = {}
        for other in spec.components:
            if other.name in targets and other.replicas and self.host_of(spec, state, other, 0) != host:
                peers[other.name] = self.slot_address(spec, state, other, targets[other.name], 0)
        return peers

    def _converge_component(
        self,
        spec: StackSpec,
        state: dict[str, Any],
        comp: ComponentSpec,
        mine: list[tuple[str, Any]],
        targets: dict[str, str],
        log: Any,
    ) -> tuple[str, dict[str, list[str]], list[Any]]:
        """Create what ``comp`` lacks; return (its colour, names started per host,
        containers to retire once the new ones are healthy)."""
        replicas = comp.replicas if spec.running else 0
        base = self.spec_hash(spec, comp)

        def wanted(host: str) -> str:
            return f"{base}-{peers_hash(self._peers(spec, state, host, targets))}"

        current = [(h, c) for h, c in mine if c.labels.get(SPEC) == wanted(h)]
        stale = [(h, c) for h, c in mine if c.labels.get(SPEC) != wanted(h)]
        if replicas == 0:
            for _, container in mine:
                log(f"stopping {container.name}")
                self._stop_container(container)
                self._remove_container(container)
            return COLORS[0], {}, []
        home = self.place(spec, state)
        for volume in comp.volumes:
            if volume.shared:
                self._ensure_stack_volume(self.client(home), spec, comp, volume)
                continue
            self._ensure_volume(
                self.client(home), spec.key, volume_name(spec.key, comp, volume.name), volume.size_gb
            )
        if current:
            color = current[0][1].labels.get(COLOR, COLORS[0])
        elif comp.stateful or not stale:
            color = COLORS[0]
        else:
            stale_colors = {c.labels.get(COLOR) for _, c in stale}
            color = COLORS[1] if COLORS[0] in stale_colors and COLORS[1] not in stale_colors else COLORS[0]
        retire: list[Any] = []
        by_index: dict[int, tuple[str, Any]] = {}
        for host, container in current:
            index = int(container.labels.get(INDEX, -1))
            if container.status == "created":
                # Never started: an interrupted _create (the worker died between its create
                # and start). It may lack its network and slot address, and starting it would
                # run it cut off (its peers' names unresolvable).
                log(f"making {container.name} again (an interrupted run left it half-made)")
                self._remove_container(container)
                continue
            if container.labels.get(COLOR) != color or index >= replicas:
                if comp.public_port:  # the edge drains it first, like a swap's old colour
                    log(f"retiring {container.name} (scaled down)")
                    retire.append(container)
                    continue
                log(f"removing {container.name} (scaled down)")
                self._stop_container(container)
                self._remove_container(container)
            elif host != self.host_of(spec, state, comp, index):
                if comp.stateful:
                    stale.append((host, container))  # placement moved (hosts changed)
                else:  # it serves until its successor on the other host is healthy
                    there = self.host_of(spec, state, comp, index)
                    log(f"retiring {container.name} on {host} (moving to {there})")
                    retire.append(container)
            else:
                by_index[index] = (host, container)
        for _host, container in stale:
            if comp.stateful or container.labels.get(COLOR) == color:
                log(f"replacing {container.name} (its spec changed)")
                self._stop_container(container)
                self._remove_container(container)
            else:
                retire.append(container)
        started: dict[str, list[str]] = {}
        for index in range(replicas):
            host = self.host_of(spec, state, comp, index)
            if index in by_index:
                _, container = by_index[index]
                if container.status != "running":
                    log(f"starting {container.name}")
                    container.start()
                    started.setdefault(host, []).append(container.name)
                continue
            name = f"sp-{spec.key}-{comp.name}-{color}{index}"
            peers = self._peers(spec, state, host, targets)
            self._create(host, spec, state, comp, color, index, name, peers, wanted(host), log)
            started.setdefault(host, []).append(name)
        return color, started, retire

    def _ensure_network(self, host: str, spec: StackSpec, state: dict[str, Any]) -> Any:
        """The stack's own bridge network on ``host``. One host: its /24 is the first free
        one from a start derived from the stack's number, recorded in ``state``. Several
        hosts: the stack number's /24 of the host's pool, not masqueraded (routed)."""
        client = self.client(host)
        key = spec.key
        name = f"sp-{key}"
        found = [n for n in client.networks.list(names=[name]) if n.name == name]
        if found:
            if not self.multi_host:
                configs = (found[0].attrs.get("IPAM") or {}).get("Config") or [{}]
                state["subnet"] = configs[0].get("Subnet")
            if (found[0].attrs.get("Options") or {}).get(BRIDGE_NAME) == bridge_name(spec):
                return found[0]
            return self._renew_network(client, found[0], spec)
        options = {"com.docker.network.bridge.enable_icc": "true", BRIDGE_NAME: bridge_name(spec)}
        if self.multi_host:
            subnet = self.subnet(state, host)
            options["com.docker.network.bridge.enable_ip_masquerade"] = "false"
        else:
            used = set()
            for network in client.networks.list():
                for config in (network.attrs.get("IPAM") or {}).get("Config") or []:
                    if config.get("Subnet"):
                        used.add(ipaddress.ip_network(config["Subnet"], strict=False))
            free = (c for c in subnet_candidates(spec.number) if not any(c.overlaps(u) for u in used))
            # Another stack may take a free /24 between the listing and the create ("Pool
            # overlaps with other one on this address space"): then the next free one.
            for _ in range(NETWORK_CREATE_ATTEMPTS):
                chosen = next(free, None)
                if chosen is None:
                    break
                try:
                    created = self._create_network(client, name, key, chosen, options)
                except APIError as exc:
                    if "overlaps" not in str(getattr(exc, "explanation", "") or exc):
                        raise
                    continue
                state["subnet"] = str(chosen)
                return created
            raise BackendError("no free project network left on the host", permanent=False)
        return self._create_network(client, name, key, subnet, options)

    @staticmethod
    def _create_network(
        client: docker.DockerClient,
        name: str,
        key: str,
        subnet: ipaddress.IPv4Network,
        options: dict[str, str],
    ) -> Any:
        ipam = docker.types.IPAMConfig(
            pool_configs=[docker.types.IPAMPool(subnet=str(subnet), gateway=str(subnet.network_address + 1))]
        )
        return client.networks.create(name, driver="bridge", ipam=ipam, labels={LABEL: key}, options=options)

    def _renew_network(self, client: docker.DockerClient, network: Any, spec: StackSpec) -> Any:
        """The stack's egress policy changed (or the network predates it): the same network
        again under the bridge name of the new policy, every container back at its address
        with its aliases (a few hundred ms without a network)."""
        network.reload()
        attached = []  # stopped ones too: they start on the network they were connected to
        for container in list_containers(client, all=True, filters={"label": f"{LABEL}={spec.key}"}):
            networks = (container.attrs.get("NetworkSettings") or {}).get("Networks") or {}
            if network.name not in networks:
                continue
            endpoint = networks[network.name] or {}
            address = (endpoint.get("IPAMConfig") or {}).get("IPv4Address") or endpoint.get("IPAddress")
            aliases = [a for a in endpoint.get("Aliases") or [] if a != container.id[:12]]
            attached.append((container, address, aliases))
        ipam = network.attrs.get("IPAM") or {}
        options = dict(network.attrs.get("Options") or {})
        options[BRIDGE_NAME] = bridge_name(spec)
        try:
            for container, _address, _aliases in attached:
                network.disconnect(container, force=True)
            network.remove()
            renewed = client.networks.create(
                network.name,
                driver="bridge",
                ipam=docker.types.IPAMConfig(
                    pool_configs=[
                        docker.types.IPAMPool(subnet=c.get("Subnet"), gateway=c.get("Gateway"))
                        for c in ipam.get("Config") or []
                    ]
                ),
                labels=network.attrs.get("Labels") or {},
                options=options,
            )
            for container, address, aliases in attached:
                renewed.connect(container, aliases=aliases or None, ipv4_address=address or None)
        except (APIError, NotFound) as exc:
            raise _wrap(exc, f"renewing network {network.name}") from exc
        return renewed

    def _ensure_volume(
        self, client: docker.DockerClient, key: str, name: str, size_gb: int | None = None
    ) -> str:
        """Find or create the named volume. With ``size_gb`` a new volume is a fixed-size
        ext4 image on the host (the engine holds it to that size: "No space left on device"
        inside the container, nothing else on the host fills up); a volume that exists keeps
        what it was made with (made before limits: no limit), and a sized one is attached
        again (after a host restart its loop device is gone) and grown to ``size_gb`` when
        that is larger (``_grow_volume``: its containers restart); it never shrinks."""
        try:
            found = client.volumes.get(name)
        except NotFound:
            found = None
        if found is not None:
            made_with = (found.attrs.get("Labels") or {}).get(SIZE)
            if made_with:  # attached again, and grown when the plan's size grew
                want = max(int(made_with), size_gb or 0)
                if self._attach_volume(client, key, name, want)[1]:
                    self._grow_volume(client, key, name, want)
            return name
        if not size_gb:
            client.volumes.create(name, labels={LABEL: key})
            return name
        link, _ = self._attach_volume(client, key, name, size_gb)
        client.volumes.create(
            name,
            driver="local",
            driver_opts={"type": "ext4", "device": link, "o": "nosuid,nodev"},
            labels={LABEL: key, SIZE: str(size_gb)},
        )
        return name

    def _ensure_stack_volume(
        self, client: docker.DockerClient, spec: StackSpec, comp: ComponentSpec, volume: VolumeSpec
    ) -> None:
        """Find or create a stack volume (shared by components). A new one's root folder is
        given to ``comp``'s user (the first component that mounts it: nothing in an image
        seeds a folder that lives below the content), so the app can write it; if that
        fails the volume goes again and the apply is retried."""
        name = volume_name(spec.key, comp, volume.name)
        try:
            client.volumes.get(name)
            existed = True
        except NotFound:
            existed = False
        self._ensure_volume(client, spec.key, name, volume.size_gb)
        if existed:
            return
        owner = comp.user if ":" in comp.user else f"{comp.user}:"
        code, out = self._run_copy(client, spec, comp, {name: "/v"}, 'chown -- "$1" /v', [owner])
        if code != 0:
            self._remove_volume(client, name)
            if volume.size_gb:
                self._release_volumes(client, spec.key, [name])
            raise BackendError(f"preparing the volume {volume.name} failed: {out}")

    def _engine_tag(self, client: docker.DockerClient) -> str:
        """A short name of the engine (its id's hash): engines that share a machine (the
        test hosts) keep their volume images and links apart."""
        engine_id = str(client.info().get("ID", ""))
        return hashlib.sha256(engine_id.encode()).hexdigest()[:12]

    def _volume_tool(
        self, client: docker.DockerClient, key: str, script: str, args: list[str], *, privileged: bool
    ) -> str:
        """Run the volume tools image once with ``script`` (fixed text; ``args`` are names we
        made) and return its output; ``BackendError`` when it fails."""

        image = str(settings.STACKPORT_VOLUME_TOOLS_IMAGE)
        image = self._ensure_image(client, image)
        tag = self._engine_tag(client)
        binds = {
            f"{settings.STACKPORT_VOLUME_IMAGE_DIR}/{tag}": {"bind": "/images", "mode": "rw"},
            "/dev": {"bind": "/dev", "mode": "rw"},
        }
        helper = client.containers.create(
            image,
            command=["sh", "-c", script, "sh", *args],
            entrypoint=[],
            environment={"ENGINE": tag},
            volumes=binds,
            # losetup: loop devices (block 7:*, loop-control 10:237) and CAP_SYS_ADMIN, not
            # --privileged (engines may run with a reduced capability bounding set).
            cap_drop=["ALL"],
            cap_add=["SYS_ADMIN", "DAC_OVERRIDE", "CHOWN", "FOWNER"] if privileged else [],
            device_cgroup_rules=["b 7:* rwm", "c 10:237 rwm"] if privileged else [],
            security_opt=["no-new-privileges:true"],
            network_disabled=True,
            user="0",
            labels={LABEL: key, HELPER: "volume"},
        )
        try:
            helper.start()
            result = helper.wait(timeout=300)
            output = helper.logs(stdout=True, stderr=True).decode(errors="replace")
        finally:
            self._remove_container(helper)
        if int(result.get("StatusCode", 1)) != 0:
            raise BackendError(f"volume tools failed: {output.strip()[-300:]}")
        return str(output)

    def _attach_volume(
        self, client: docker.DockerClient, key: str, name: str, size_gb: int
    ) -> tuple[str, bool]:
        """Make (once) the volume's filesystem image, attach it to a loop device and point
        the volume's link at it; (the link's path, whether the image is smaller than
        ``size_gb``)."""
        tag = self._engine_tag(client)
        output = self._volume_tool(
            client, key, ATTACH_SCRIPT, [name, f"{tag}-{name}", str(int(size_gb))], privileged=True
        )
        return f"{VOLUME_LINKS}/{tag}-{name}", GROW_MARK in output

    def _grow_volume(self, client: docker.DockerClient, key: str, name: str, size_gb: int) -> None:
        """Grow a sized volume's image and filesystem to ``size_gb``: the containers that use
        it are stopped for it (the engine unmounts it) and started again, their data kept."""
        users = client.containers.list(filters={"volume": name})
        if any(HELPER in c.labels for c in users):  # a backup or restore reads it: not now
            raise BackendError(f"the volume {name} is busy; growing it later", permanent=False)
        for container in users:
            self._stop_container(container)
        try:
            self._volume_tool(client, key, GROW_SCRIPT, [name, str(int(size_gb))], privileged=True)
        finally:
            for container in users:
                container.start()
        problem = self._wait_healthy(client, key, [c.name for c in users], lambda *_: None)
        if problem:
            raise BackendError(f"after growing {name}: {problem}")

    def _release_volumes(self, client: docker.DockerClient, key: str, names: list[str]) -> None:
        """Detach and delete the images of removed sized volumes."""
        if names:
            self._volume_tool(client, key, RELEASE_SCRIPT, names, privileged=True)

    def volume_usage(self, spec: StackSpec, state: dict[str, Any]) -> list[VolumeUsage]:
        """Used and total bytes of the stack's volumes on its home host, measured by one
        helper container that mounts them read-only: ``df`` for a sized volume (its own
        filesystem), ``du`` for one made before limits."""
        if not KEY_RE.match(spec.key):
            raise BackendError(f"invalid stack key {spec.key!r}", permanent=True)
        wanted = {
            volume_name(spec.key, comp, v.name): (comp.name, v.name)
            for comp in spec.components
            for v in comp.volumes
        }
        try:
            client = self.client(self.place(spec, state))
            found = [
                v for v in client.volumes.list(filters={"label": f"{LABEL}={spec.key}"}) if v.name in wanted
            ]
            if not found:
                return []
            sized = {v.name for v in found if (v.attrs.get("Labels") or {}).get(SIZE)}
            args = [f"s{i}" if v.name in sized else str(i) for i, v in enumerate(found)]
            output = self._volume_tool_ro(client, spec.key, found, args)
        except (APIError, DockerException) as exc:
            raise _wrap(exc, f"measuring the volumes of {spec.key}") from exc
        result = []
        for line in output.splitlines():
            parts = line.split()
            if len(parts) != 3 or not parts[2].isdigit():
                continue
            volume = found[int(parts[0].lstrip("s"))]
            component, name = wanted[volume.name]
            total = int(parts[1]) if parts[1].isdigit() else None
            result.append(VolumeUsage(component, name, int(parts[2]), total))
        return result

    def _volume_tool_ro(
        self, client: docker.DockerClient, key: str, volumes: list[Any], args: list[str]
    ) -> str:
        image = str(settings.STACKPORT_VOLUME_TOOLS_IMAGE)
        image = self._ensure_image(client, image)
        helper = client.containers.create(
            image,
            command=["sh", "-c", USAGE_SCRIPT, "sh", *args],
            entrypoint=[],
            volumes={v.name: {"bind": f"/v/{i}", "mode": "ro"} for i, v in enumerate(volumes)},
            network_disabled=True,
            user="0",
            cap_drop=["ALL"],
            cap_add=["DAC_READ_SEARCH"],
            security_opt=["no-new-privileges:true"],
            read_only=True,
            labels={LABEL: key, HELPER: "volume"},
        )
        try:
            helper.start()
            helper.wait(timeout=120)
            return str(helper.logs(stdout=True, stderr=False).decode(errors="replace"))
        finally:
            self._remove_container(helper)

    def slot_address(
        self, spec: StackSpec, state: dict[str, Any], comp: ComponentSpec, color: str, index: int
    ) -> str:
        """Fixed address of a replica: its host's subnet, then component position, colour
        and index give the slot."""
        position = [c.name for c in spec.components].index(comp.name)
        offset = FIRST_SLOT + position * SLOTS_PER_COMPONENT + COLORS.index(color) * MAX_REPLICAS + index
        return str(self.subnet(state, self.host_of(spec, state, comp, index)).network_address + offset)

    def upstreams(self, spec: StackSpec, state: dict[str, Any]) -> list[str]:
        public = [c for c in spec.components if c.public_port]
        return [
            f"{self.slot_address(spec, state, comp, color, index)}:{comp.public_port}"
            for comp in public
            for color in COLORS
            for index in range(MAX_REPLICAS)
        ]

    def run_options(
        self,
        spec: StackSpec,
        comp: ComponentSpec,
        color: str,
        index: int,
        name: str,
        peers: dict[str, str] | None = None,
        spec_label: str | None = None,
    ) -> dict[str, Any]:
        """The hardened container settings (docs/security.md), from a validated spec only."""
        volumes = {volume_name(spec.key, comp, v.name): {"bind": v.path, "mode": "rw"} for v in comp.volumes}
        if comp.content_path and spec.content_release:
            volumes[content_volume(spec.key, spec.content_release)] = {
                "bind": comp.content_path,
                "mode": "ro",
            }
        options: dict[str, Any] = {
            "name": name,
            "hostname": f"{comp.name}-{color}{index}",
            "user": comp.user,
            "environment": {k: with_peer_addresses(v, peers or {}) for k, v in comp.env},
            "labels": {
                LABEL: spec.key,
                COMPONENT: comp.name,
                INDEX: str(index),
                COLOR: color,
                SPEC: spec_label or f"{self.spec_hash(spec, comp)}-{peers_hash(peers or {})}",
                VERSION: comp.version,
            },
            "volumes": volumes,
            "cap_drop": ["ALL"],
            "cap_add": list(comp.capabilities),
            "security_opt": ["no-new-privileges:true"],
            "read_only": comp.read_only,
            "tmpfs": {p: "rw,nosuid,nodev,size=64m" for p in comp.tmpfs},
            "mem_limit": f"{comp.memory_mb}m",
            "memswap_limit": f"{comp.memory_mb}m",
            "nano_cpus": int(comp.cpus * 1_000_000_000),
            "pids_limit": comp.pids,
            "privileged": False,
            "network_mode": None,
            "log_config": {"type": "json-file", "config": {"max-size": "10m", "max-file": "3"}},
            "restart_policy": {"Name": "unless-stopped"},
            "extra_hosts": dict(peers or {}),
        }
        options.pop("network_mode")
        if comp.health:
            options["healthcheck"] = {
                "test": ["CMD", *comp.health],
                "interval": 2_000_000_000,
                "timeout": 3_000_000_000,
                "retries": 3,
                "start_period": 120_000_000_000,
            }
        return options

    @staticmethod
    def spec_hash(spec: StackSpec, comp: ComponentSpec) -> str:
        parts: list[Any] = [repr(comp), spec.content_release if comp.content_path else None, spec.number]
        shared = sorted(v.name for v in comp.volumes if v.shared)
        if shared:  # only then: the hash of every other component stays what it was
            parts.append(shared)
        data = json.dumps(
            parts,
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(data.encode()).hexdigest()[:16]

    def _create(
        self,
        host: str,
        spec: StackSpec,
        state: dict[str, Any],
        comp: ComponentSpec,
        color: str,
        index: int,
        name: str,
        peers: dict[str, str],
        spec_label: str,
        log: Any,
    ) -> None:
        client = self.client(host)
        network = self._ensure_network(host, spec, state)
        image = self._ensure_image(client, comp.image)
        log(f"starting {name} on {host} ({comp.version or comp.image})")
        try:  # a leftover of an interrupted run under the same name
            self._remove_container(client.containers.get(name))
        except NotFound:
            pass
        options = self.run_options(spec, comp, color, index, name, peers, spec_label)
        created = client.containers.create(image, **options)
        try:
            client.api.disconnect_container_from_network(created.id, "bridge")
        except APIError:
            pass  # not attached to the default bridge
        network.connect(
            created, aliases=[comp.name], ipv4_address=self.slot_address(spec, state, comp, color, index)
        )
        created.start()

    def _ensure_image(self, client: docker.DockerClient, image: str) -> str:
        """Pull ``image`` unless the engine has it; the reference to create containers with.
        A host with a ``RegistryPull`` pulls the catalog's references from its address
        (same digest, with its credentials) and runs them under that name."""
        record = next((h for h in self.hosts if self._clients.get(h.name) is client), None)
        pull = record.registry if record else None
        source = pull.source(image) if pull else ""
        for local in (image, source) if source else (image,):
            try:
                client.images.get(local)
                return local
            except ImageNotFound:
                pass
        reference = source or image
        repo, _, digest = reference.partition("@")
        auth = {"username": pull.username, "password": pull.password} if source and pull else None
        client.images.pull(repo, tag=digest or None, auth_config=auth)
        return reference

    def _containers(self, client: docker.DockerClient, key: str) -> list[Any]:
        return list_containers(client, all=True, filters={"label": f"{LABEL}={key}"})

    @staticmethod
    def _unpublish(key: str, container: Any, log: Any) -> None:
        """Take an old internal replica out of its service name's DNS answers while it
        keeps serving: reconnected to the stack network at the same address (so the same
        MAC: open connections carry on) without the alias. Clients that looked the name up
        earlier (nginx caches it for 10 s) still reach it until it is stopped."""
        name = f"sp-{key}"
        networks = (container.attrs.get("NetworkSettings") or {}).get("Networks") or {}
        address = (networks.get(name) or {}).get("IPAddress")
        if not address:
            return
        log(f"taking {container.name} out of the service name")
        network = container.client.networks.get(name)
        network.disconnect(container)
        network.connect(container, ipv4_address=address)

    @staticmethod
    def _stop_container(container: Any) -> None:
        try:
            container.stop(timeout=STOP_TIMEOUT)
        except NotFound:
            pass
        except APIError as exc:
            if exc.status_code != 304:
                raise

    @staticmethod
    def _remove_container(container: Any) -> None:
        try:
            container.remove(force=True)
        except NotFound:
            pass
        except APIError as exc:  # removal already in progress
            if exc.status_code != 409:
                raise

    def _wait_healthy_on(self, key: str, names: dict[str, list[str]], log: Any) -> str:
        for host, on_host in names.items():
            failed = self._wait_healthy(self.client(host), key, on_host, log)
            if failed:
                return failed
        return ""

    def _wait_healthy(self, client: docker.DockerClient, key: str, names: list[str], log: Any) -> str:
        """'' when every container in ``names`` is healthy, else what is wrong."""
        deadline = time.monotonic() + HEALTH_TIMEOUT
        pending = set(names)
        # Restarts count from the start of this wait: a container started beside the tier
        # it needs may have exited while that tier was still starting.
        restarts_before: dict[str, int] = {}
        while pending:
            for container in self._containers(client, key):
                if container.name not in pending:
                    continue
                health = (container.attrs["State"].get("Health") or {}).get("Status", "healthy")
                count = int(container.attrs.get("RestartCount") or 0)
                restarts = count - restarts_before.setdefault(container.name, count)
                if container.status == "dead" or health == "unhealthy" or restarts >= CRASH_LIMIT:
                    tail = container.logs(tail=8).decode(errors="replace").strip()
                    what = "failed its health check" if health == "unhealthy" else "keeps exiting"
                    return f"{container.name} {what}" + (f"; last log lines:\n{tail}" if tail else "")
                if health == "healthy" and container.status == "running":
                    pending.discard(container.name)
                    log(f"{container.name} is healthy")
            if pending and time.monotonic() > deadline:
                return f"not healthy within {HEALTH_TIMEOUT}s: {', '.join(sorted(pending))}"
            if pending:
                time.sleep(0.5)
        return ""

    # --- data ----------------------------------------------------------------------------------
    def migrate_data(
        self, spec: StackSpec, state: dict[str, Any], old: ComponentSpec, new: ComponentSpec, log: Any = print
    ) -> None:
        """dump-and-restore into fresh volumes, by the catalog's procedure for ``new``: a
        temporary container of the new version starts on them (so it initialises an empty
        data directory with the same credentials); ``new.data_export``, when there is one,
        runs in the old container and its output is handed to the restore as the file
        ``$STACKPORT_DUMP`` on the new volume; ``new.data_restore`` then runs in the
        temporary container with the old container's address in ``$STACKPORT_OLD_HOST``
        (it may pull over the stack network with the new version's client) and exits 0 only
        once the data is in. The temporary container is stopped (so the server writes
        everything out) and removed. The old container and volumes are untouched; on any
        failure the new volumes are removed again."""
        if old.name != new.name or new.data_generation <= old.data_generation:
            raise BackendError("a data migration needs a new data generation", permanent=True)
        if not new.data_restore or not new.volumes:
            raise BackendError(f"no dump-and-restore procedure for {new.name}", permanent=True)
        client = self.client(self.place(spec, state))
        volumes = [volume_name(spec.key, new, v.name) for v in new.volumes]
        name = f"sp-{spec.key}-{new.name}-migrate"
        # A resumed operation: once the new version runs on its volumes, the data moved.
        running_on = [
            c.name
            for c in self._containers(client, spec.key)
            if HELPER not in c.labels and {m.get("Name") for m in c.attrs.get("Mounts") or []} & set(volumes)
        ]
        if running_on:
            log(f"the data is in {new.version}'s volumes already ({running_on[0]} uses them)")
            return
        temp = None
        try:
            # What an attempt that stopped half-way left: the old version is still the source.
            try:
                self._remove_container(client.containers.get(name))
            except NotFound:
                pass
            self._cleanup_failed_move(client, None, volumes)
            network = self._ensure_network(self.place(spec, state), spec, state)
            for volume, volume_spec in zip(volumes, new.volumes, strict=True):
                self._ensure_volume(client, spec.key, volume, volume_spec.size_gb)
            old_ip = self.slot_address(spec, state, old, COLORS[0], 0)
            self._ensure_image(client, new.image)
            options = self.run_options(spec, new, COLORS[1], 0, name)
            options["labels"] = {LABEL: spec.key, HELPER: "migrate"}
            options["restart_policy"] = {"Name": "no"}
            temp = client.containers.create(self._ensure_image(client, new.image), **options)
            try:
                client.api.disconnect_container_from_network(temp.id, "bridge")
            except APIError:
                pass
            network.connect(temp, ipv4_address=self.slot_address(spec, state, new, COLORS[1], 0))
            temp.start()
            problem = self._wait_healthy(client, spec.key, [name], log)
            if problem:
                raise BackendError(f"the new version did not start on an empty volume: {problem}")
            log(f"copying the data of {old.name} {old.version} into {new.version}")
            env = {"STACKPORT_OLD_HOST": old_ip}
            if new.data_export:
                dump = self._export_data(client, spec.key, old, new.data_export, log)
                env["STACKPORT_DUMP"] = self._hand_over(temp, new, dump)
            result = temp.exec_run(list(new.data_restore), environment=env, demux=True)
            out = b"".join(x or b"" for x in result.output).decode(errors="replace").strip()
            if result.exit_code != 0:
                raise BackendError(f"dump and restore failed: {out[-500:]}", permanent=True)
            if "STACKPORT_DUMP" in env:
                temp.exec_run(["rm", "-f", env["STACKPORT_DUMP"]])
            log("dump restored into the new version" + (f": {out.splitlines()[-1][:200]}" if out else ""))
            self._stop_container(temp)
        except BackendError:
            self._cleanup_failed_move(client, temp, volumes)
            raise
        except (APIError, DockerException) as exc:
            self._cleanup_failed_move(client, temp, volumes)
            raise _wrap(exc, f"migrating {new.name}") from exc
        self._remove_container(temp)

    def _export_data(
        self, client: docker.DockerClient, key: str, old: ComponentSpec, command: tuple[str, ...], log: Any
    ) -> bytes:
        """The export command's standard output, run in the old version's running container."""
        running = [
            c
            for c in self._containers(client, key)
            if c.labels.get(COMPONENT) == old.name and HELPER not in c.labels and c.status == "running"
        ]
        if not running:
            raise BackendError(f"dump and restore failed: {old.name} is not running", permanent=True)
        source = min(running, key=lambda c: int(c.labels.get(INDEX, 0)))
        result = source.exec_run(list(command), demux=True)
        stdout, stderr = result.output
        what = f"the export from {old.name} {old.version}"
        if result.exit_code != 0:
            detail = (stderr or stdout or b"").decode(errors="replace").strip()
            raise BackendError(f"{what} failed: {detail[-500:]}", permanent=True)
        if len(stdout or b"") > EXPORT_LIMIT:
            raise BackendError(f"{what} is larger than {EXPORT_LIMIT >> 20} MiB", permanent=True)
        log(f"exported {len(stdout or b'')} bytes from {source.name}")
        return stdout or b""

    @staticmethod
    def _hand_over(temp: Any, new: ComponentSpec, dump: bytes) -> str:
        """Put ``dump`` into the temporary container's first volume (writable even on a
        read-only root; the volume's own directory mode keeps other users out); its path."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(DUMP_FILE)
            info.size, info.mode, info.mtime = len(dump), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(dump))
        path = new.volumes[0].path
        if not temp.put_archive(path, buffer.getvalue()):
            raise BackendError(f"could not hand the export to the new {new.name}", permanent=True)
        return f"{path.rstrip('/')}/{DUMP_FILE}"

    def _cleanup_failed_move(self, client: docker.DockerClient, temp: Any, volumes: list[str]) -> None:
        if temp is not None:
            self._remove_container(temp)
        sized = []
        for volume in volumes:
            try:
                found = client.volumes.get(volume)
                found.remove(force=True)
            except NotFound:
                continue
            if (found.attrs.get("Labels") or {}).get(SIZE):
                sized.append(volume)
        self._release_volumes(client, "", sized)

    # --- observe / destroy / logs / samples ----------------------------------------------------
    def _replica(self, spec: StackSpec | None, state: dict[str, Any], host: str, c: Any) -> ReplicaState:
        health = (c.attrs["State"].get("Health") or {}).get("Status", "healthy")
        if c.status == "running":
            status = {"healthy": "running", "starting": "starting"}.get(health, "unhealthy")
        else:
            status = c.status
        comp, index = c.labels.get(COMPONENT, "?"), int(c.labels.get(INDEX, 0))
        address = None
        comp_spec = spec and next((x for x in spec.components if x.name == comp), None)
        if spec and comp_spec and comp_spec.public_port:
            color = c.labels.get(COLOR, COLORS[0])
            address = f"{self.slot_address(spec, state, comp_spec, color, index)}:{comp_spec.public_port}"
        return ReplicaState(
            comp, index, host, status, address, c.labels.get(VERSION, ""), c.labels.get(SPEC, "")
        )

    def observe(self, spec: StackSpec, state: dict[str, Any]) -> Observed:
        try:
            found = self._existing(spec.key)
        except (APIError, DockerException) as exc:
            raise _wrap(exc, f"observing {spec.key}") from exc
        return Observed([self._replica(spec, state, h, c) for h, c in found if HELPER not in c.labels])

    def stacks(self) -> dict[str, list[ReplicaState]]:
        """One list call per host (the engine's summaries, no inspect per container: the
        reconciler's pass costs calls per host, not per stack)."""
        result: dict[str, list[ReplicaState]] = {}
        for host in self.hosts:
            try:
                summaries = self.client(host.name).api.containers(all=True, filters={"label": LABEL})
            except (APIError, DockerException, OSError) as exc:
                raise _wrap(exc, f"listing containers on {host.name}") from exc
            for c in summaries:
                labels = c.get("Labels") or {}
                if HELPER not in labels and labels.get(LABEL):
                    result.setdefault(labels[LABEL], []).append(summary_replica(host.name, c))
        return result

    def destroy(self, key: str, state: dict[str, Any]) -> None:
        if not KEY_RE.match(key):
            raise BackendError(f"invalid stack key {key!r}", permanent=True)
        for host in self.hosts:
            client = self.client(host.name)
            try:
                for c in self._containers(client, key):
                    self._remove_container(c)
                for n in client.networks.list(filters={"label": f"{LABEL}={key}"}):
                    try:
                        n.remove()
                    except NotFound:
                        pass
                sized = []
                for v in client.volumes.list(filters={"label": f"{LABEL}={key}"}):
                    try:
                        v.remove(force=True)
                    except NotFound:
                        pass
                    if (v.attrs.get("Labels") or {}).get(SIZE):
                        sized.append(v.name)
                self._release_volumes(client, key, sized)
            except (APIError, DockerException) as exc:
                raise _wrap(exc, f"destroying {key} on {host.name}") from exc

    def logs(self, key: str, state: dict[str, Any], component: str, tail: int = 200) -> Iterator[str]:
        for host in self.hosts:
            try:
                client = self.client(host.name)
                found = list_containers(
                    client, all=True, filters={"label": [f"{LABEL}={key}", f"{COMPONENT}={component}"]}
                )
                chunks = []
                for c in found:
                    try:
                        chunks.append((c.name, c.logs(tail=tail, timestamps=True)))
                    except NotFound:
                        continue  # removed while we read: its lines are gone with it
            except (APIError, DockerException, OSError) as exc:
                raise _wrap(exc, f"reading the logs of {key} on {host.name}") from exc
            for name, data in chunks:
                for line in data.decode(errors="replace").splitlines():
                    yield f"{name} {line}"

    def samples(self, key: str, state: dict[str, Any]) -> list[ResourceSample]:
        result = []
        running = []
        for h in self.hosts:
            try:
                running += list_containers(self.client(h.name), filters={"label": f"{LABEL}={key}"})
            except (APIError, DockerException, OSError) as exc:
                raise _wrap(exc, f"sampling {key} on {h.name}") from exc
        for c in running:
            try:
                stats = c.stats(stream=False)
            except NotFound:
                continue  # removed while we sampled
            except (APIError, DockerException, OSError) as exc:
                raise _wrap(exc, f"sampling {c.name}") from exc
            try:
                cpu = (
                    stats["cpu_stats"]["cpu_usage"]["total_usage"]
                    - stats["precpu_stats"]["cpu_usage"]["total_usage"]
                )
            except (KeyError, TypeError):
                continue  # stopped between the listing and the stats: nothing to sample
            system = stats["cpu_stats"].get("system_cpu_usage", 0) - stats["precpu_stats"].get(
                "system_cpu_usage", 0
            )
            cpus = stats["cpu_stats"].get("online_cpus", 1)
            percent = (cpu / system * cpus * 100) if system > 0 else 0.0
            result.append(
                ResourceSample(
                    c.labels.get(COMPONENT, "?"),
                    int(c.labels.get(INDEX, 0)),
                    round(percent, 2),
                    int(stats["memory_stats"].get("usage", 0)),
                )
            )
        return result

    def prune_images(self, keep: set[str]) -> list[str]:
        """Remove catalog images (the registry's repositories) on every host that no
        container uses and ``keep`` (what releases may roll back to) does not name."""
        removed = []
        for host in self.hosts:
            client = self.client(host.name)
            used = {c.attrs.get("Image") for c in list_containers(client, all=True)}
            pull = host.registry  # pulled under its address: the same images by that name
            kept = keep | {pull.source(ref) for ref in keep} - {""} if pull else keep
            for image in client.images.list():
                refs = set(image.attrs.get("RepoDigests") or []) | set(image.tags)
                if image.id in used or refs & kept:
                    continue
                # Only catalog images from a registry (host[:port]/namespace/name); local
                # tags (stackport/debian:...) and anything else on the host are not ours.
                if not any(_is_catalog_ref(r) for r in refs):
                    continue
                try:
                    client.images.remove(image.id, force=False)
                    removed.append(f"{host.name}:{sorted(refs)[0]}")
                except APIError:
                    pass  # in use by a stopped container or a child image
        return removed

    def prune_content(self, keep: dict[str, set[str]]) -> list[str]:
        """Content volumes of old releases (named by ``content_volume``, labelled with the
        stack's key). The completion marker goes first: a prune cut short leaves a volume
        ``put_content`` rewrites, never a marker that vouches for a missing volume."""
        removed = []
        for host in self.hosts:
            client = self.client(host.name)
            try:
                volumes = client.volumes.list(filters={"label": LABEL})
            except (APIError, DockerException) as exc:
                raise _wrap(exc, f"listing content volumes on {host.name}") from exc
            names = {v.name for v in volumes}
            for volume in volumes:
                key = (volume.attrs.get("Labels") or {}).get(LABEL, "")
                prefix = content_volume(key, "")
                if key not in keep or not volume.name.startswith(prefix) or volume.name.endswith("-ok"):
                    continue
                if not RELEASE_ID_RE.fullmatch(release := volume.name.removeprefix(prefix)):
                    continue
                if release in keep[key] or list_containers(client, all=True, filters={"volume": volume.name}):
                    continue
                try:
                    if f"{volume.name}-ok" in names:
                        client.volumes.get(f"{volume.name}-ok").remove(force=True)
                    volume.remove(force=True)
                except NotFound:
                    pass
                except (APIError, DockerException) as exc:
                    raise _wrap(exc, f"removing content of {key}") from exc
                removed.append(f"{host.name}:{volume.name}")
        return removed

    # --- content -------------------------------------------------------------------------------
    def put_content(
        self,
        key: str,
        state: dict[str, Any],
        release: str,
        archive: BinaryIO,
        image: str | None = None,
        extras: Sequence[BinaryIO] = (),
    ) -> None:
        """Create (once) the read-only content volume of a release from a tar archive.

        The archive is unpacked by the engine (``put_archive`` into a created, never started
        helper container), so no shell and no customer-controlled path reaches a command line.
        """
        if not RELEASE_ID_RE.fullmatch(release):
            raise BackendError(f"invalid release id {release!r}", permanent=True)
        for host in self.hosts:  # a replica may run on any of them
            self._put_content(self.client(host.name), key, release, archive, image, extras)

    def _put_content(
        self,
        client: docker.DockerClient,
        key: str,
        release: str,
        archive: BinaryIO,
        image: str | None,
        extras: Sequence[BinaryIO] = (),
    ) -> None:
        volume = content_volume(key, release)
        marker = f"{volume}-ok"  # created last: the content volume is complete
        try:
            if client.volumes.list(filters={"name": marker}):
                return
            for leftover in client.volumes.list(filters={"name": volume}):
                if leftover.name == volume:  # half-written by an interrupted run
                    # ...and maybe still mounted by that run's never-started helper.
                    for stale in list_containers(
                        client, all=True, filters={"volume": volume, "label": f"{HELPER}=content"}
                    ):
                        self._remove_container(stale)
                    leftover.remove(force=True)
        except (APIError, DockerException) as exc:
            raise _wrap(exc, f"checking content of {key}") from exc
        helper = None
        try:
            if image:
                image = self._ensure_image(client, image)
            else:
                image = self._helper_image(client)
            client.volumes.create(volume, labels={LABEL: key})
            helper = client.containers.create(
                image,
                command=["true"],
                volumes={volume: {"bind": "/content", "mode": "rw"}},
                network_disabled=True,
                labels={HELPER: "content", LABEL: key},
                user="0",
            )
            archive.seek(0)  # streamed to the engine, from the start for each host
            if not helper.put_archive("/content", archive):
                raise BackendError("the engine refused the content archive", permanent=True)
            for extra in extras:  # built dependencies, on top of the content
                extra.seek(0)
                if not helper.put_archive("/content", extra):
                    raise BackendError("the engine refused the built dependencies", permanent=True)
            self._remove_container(helper)
            helper = None
            client.volumes.create(marker, labels={LABEL: key, COMPLETE: "1"})
        except (APIError, DockerException) as exc:
            raise _wrap(exc, f"writing content of {key}") from exc
        finally:
            if helper is not None:
                self._remove_container(helper)

    # --- dependency builds (stacks.runtime.builds drives these) --------------------------------
    def build(self, job: BuildJob, archive: BinaryIO, out: BinaryIO, log: Any = print) -> int:
        """Run the build in a hardened container of the runtime image (no capabilities,
        read-only root, the image's own user, memory, CPU and process limits) on an internal
        network of its own (no route out), with a work volume at /build; its only way out is
        its egress proxy (``build_proxy``: the registries by name, nothing else), which joins
        that network and the build network. All of them are removed afterwards."""
        if not BUILD_NAME_RE.fullmatch(job.name):
            raise BackendError(f"invalid build name {job.name!r}", permanent=True)
        client = self.client()
        name = f"sp-build-{job.name}"
        container = proxy = None
        try:
            image = self._ensure_image(client, job.image)
            proxy_image = self._ensure_image(client, job.proxy_image or job.image)
            pool = self._pool(self.hosts[0].name) if self.multi_host else None
            self._ensure_build_network(client, job.network, pool)
            self._remove_stale_builds(client, job.timeout)  # leftovers of interrupted runs
            inner = self._create_build_network(client, name, pool)
            proxy, address = self._start_build_proxy(client, name, job, proxy_image, inner)
            client.volumes.create(name, labels={HELPER: "build"})
            proxy_url = f"http://{address}:{build_proxy.PORT}"
            env = {
                **dict(job.env),
                **{key: proxy_url for key in BUILD_PROXY_VARIABLES},
                "NO_PROXY": "",
                "no_proxy": "",
            }
            container = client.containers.create(
                image,
                name=name,
                entrypoint=["/bin/sh", "-c", job.script],
                command=[],
                environment=env,
                working_dir="/build",
                volumes={name: {"bind": "/build", "mode": "rw"}},
                read_only=True,
                tmpfs={"/tmp": "rw,nosuid,nodev,size=2g"},  # noqa: S108 - the container's own tmpfs
                cap_drop=["ALL"],
                security_opt=["no-new-privileges:true"],
                mem_limit=f"{job.memory_mb}m",
                memswap_limit=f"{job.memory_mb}m",
                nano_cpus=int(job.cpus * 1_000_000_000),
                pids_limit=1024,
                privileged=False,
                network=name,  # internal: the proxy is the only way out
                dns=[BUILD_NO_DNS],  # no names at all: the proxy resolves the registries
                labels={HELPER: "build"},
                log_config={"type": "json-file", "config": {"max-size": "10m", "max-file": "1"}},
            )
            user = str(container.attrs["Config"].get("User") or "0")
            uid = _image_uid(container, user)
            container.put_archive("/build", _build_skeleton(uid, job.files))
            archive.seek(0)
            if not container.put_archive("/build/app", archive):
                raise BackendError("the engine refused the content archive", permanent=True)
            container.start()
            timed_out = threading.Event()

            def stop() -> None:
                timed_out.set()
                try:
                    container.kill()
                except (APIError, DockerException):
                    pass

            timer = threading.Timer(job.timeout, stop)
            timer.start()
            try:
                pending = b""
                for chunk in container.logs(stream=True, follow=True):
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        log(line.decode("utf-8", "replace").rstrip("\r"))
                if pending:
                    log(pending.decode("utf-8", "replace"))
                code = int(container.wait(timeout=60).get("StatusCode", 1))
            finally:
                timer.cancel()
            for line in proxy.logs().decode("utf-8", "replace").splitlines():
                if line.strip() and line != build_proxy.READY:
                    log(line)  # what the proxy refused ("stackport build proxy: refused ...")
            if timed_out.is_set():
                raise BackendError(f"the build took longer than {job.timeout:.0f} s", permanent=True)
            if code == 0:
                stream, _ = container.get_archive(job.output)
                try:
                    for data in stream:
                        out.write(data)  # the caller's writer stops an artifact too large
                finally:
                    close = getattr(stream, "close", None)
                    if close is not None:
                        close()
            return code
        except (APIError, DockerException) as exc:
            raise _wrap(exc, "building the dependencies") from exc
        finally:
            self._remove_build(client, name)

    def _start_build_proxy(
        self, client: docker.DockerClient, name: str, job: BuildJob, image: str, inner: Any
    ) -> tuple[Any, str]:
        """The build's egress proxy (``build_proxy``, run by the image's python3), on the
        build network (out) and the build's internal network (in), as hardened as the build;
        ready when it says it listens. Returns it and its address on the internal network."""
        config = json.dumps(
            {
                "tunnels": [t.rsplit(":", 1) for t in job.tunnels],
                "plain": [p.rsplit(":", 1) for p in job.plain],
                "addresses": {host: [a for h, a in job.addresses if h == host] for host, _ in job.addresses},
            }
        )
        proxy = client.containers.create(
            image,
            name=f"{name}-proxy",
            entrypoint=["python3", "-I", "-c", BUILD_PROXY_SOURCE, config],
            command=[],
            user="65534:65534",  # nobody: it needs no file of its own
            environment={"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"},
            read_only=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
            mem_limit="128m",
            memswap_limit="128m",
            nano_cpus=500_000_000,
            pids_limit=256,
            privileged=False,
            network=job.network,
            labels={HELPER: "build"},
            log_config={"type": "json-file", "config": {"max-size": "1m", "max-file": "1"}},
            healthcheck={"test": ["NONE"]},  # not the image's web check
        )
        inner.connect(proxy)
        proxy.start()
        deadline = time.monotonic() + BUILD_PROXY_START_SECONDS
        while build_proxy.READY.encode() not in proxy.logs():
            proxy.reload()
            if proxy.status not in ("created", "running") or time.monotonic() > deadline:
                said = proxy.logs().decode("utf-8", "replace").strip()[-300:]
                raise BackendError(
                    f"the build's egress proxy did not start: {said or proxy.status}", permanent=False
                )
            time.sleep(0.1)
        proxy.reload()
        address = (proxy.attrs["NetworkSettings"]["Networks"].get(inner.name) or {}).get("IPAddress")
        if not address:
            raise BackendError(
                "the build's egress proxy has no address on the build's network", permanent=False
            )
        return proxy, str(address)

    def _create_build_network(
        self, client: docker.DockerClient, name: str, pool: ipaddress.IPv4Network | None
    ) -> Any:
        """The build's own network: internal (no route out of the host, not even to its
        gateway's other networks), a /28 of the build range (``_build_ranges``), an "spn-"
        bridge (the hosts' egress rules: no internet, never the host itself)."""
        bridge = "spn-" + hashlib.sha256(name.encode()).hexdigest()[:11]
        used = self._used_subnets(client)
        candidates = (
            subnet
            for block in _build_ranges(pool)
            for subnet in block.subnets(new_prefix=28)
            if not any(subnet.overlaps(u) for u in used)
        )
        for _ in range(NETWORK_CREATE_ATTEMPTS):  # a concurrent build may take one first
            subnet = next(candidates, None)
            if subnet is None:
                break
            ipam = docker.types.IPAMConfig(
                pool_configs=[
                    docker.types.IPAMPool(subnet=str(subnet), gateway=str(subnet.network_address + 1))
                ]
            )
            try:
                return client.networks.create(
                    name,
                    driver="bridge",
                    internal=True,
                    ipam=ipam,
                    labels={HELPER: "build"},
                    options={"com.docker.network.bridge.enable_icc": "true", BRIDGE_NAME: bridge},
                )
            except APIError as exc:
                if "overlaps" not in str(getattr(exc, "explanation", "") or exc):
                    raise
        raise BackendError("no free network left on the host for builds", permanent=False)

    @staticmethod
    def _used_subnets(client: docker.DockerClient) -> set[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        used = set()
        for existing in client.networks.list():
            for config in (existing.attrs.get("IPAM") or {}).get("Config") or []:
                if config.get("Subnet"):
                    used.add(ipaddress.ip_network(config["Subnet"], strict=False))
        return used

    def _ensure_build_network(
        self, client: docker.DockerClient, network: str, pool: ipaddress.IPv4Network | None = None
    ) -> None:
        """The build network, where the builds' egress proxies reach the internet: a bridge
        of its own, never a stack's, no traffic between its containers, an "spe-" bridge
        name, so the hosts' egress rules (scripts/host-firewall.sh) treat it as a stack
        network allowed the internet (never the host, private ranges or the stacks). It takes
        a /24 of the project supernet from its top end; on hosts with an address pool
        (routed, scripts/docker-hosts.sh) the pool's first /24 (third octet 0, never a
        stack's), as only the pool is routed and let out there. One made elsewhere than the
        pool is made again when no container uses it."""
        found = [n for n in client.networks.list(names=[network]) if n.name == network]
        if found and pool is not None:
            configs = (found[0].attrs.get("IPAM") or {}).get("Config") or [{}]
            subnet = configs[0].get("Subnet")
            if not subnet or not ipaddress.ip_network(subnet, strict=False).subnet_of(pool):  # type: ignore[arg-type]
                found[0].reload()
                if not found[0].attrs.get("Containers"):
                    found[0].remove()
                    found = []
        if found:
            return
        used = self._used_subnets(client)
        if pool is not None:
            candidates: Iterable[ipaddress.IPv4Network] = [
                ipaddress.IPv4Network((int(pool.network_address), 24))
            ]
        else:
            count = 2 ** (24 - PROJECT_SUPERNET.prefixlen)
            top = (int(PROJECT_SUPERNET.network_address) + ((count - 1 - i) << 8) for i in range(count))
            candidates = (ipaddress.IPv4Network((a, 24)) for a in top)
        subnet = next((c for c in candidates if not any(c.overlaps(u) for u in used)), None)
        if subnet is None:
            raise BackendError("no free network left on the host for builds", permanent=False)
        bridge = "spe-" + hashlib.sha256(network.encode()).hexdigest()[:11]
        ipam = docker.types.IPAMConfig(
            pool_configs=[docker.types.IPAMPool(subnet=str(subnet), gateway=str(subnet.network_address + 1))]
        )
        try:
            client.networks.create(
                network,
                driver="bridge",
                ipam=ipam,
                labels={HELPER: "build"},
                options={"com.docker.network.bridge.enable_icc": "false", BRIDGE_NAME: bridge},
            )
        except APIError as exc:
            if exc.status_code != 409:  # made by a concurrent build
                raise

    def _remove_stale_builds(self, client: docker.DockerClient, timeout: float) -> None:
        """Remove build containers, proxies, internal networks and work volumes (labelled as
        builds) older than the build timeout plus a margin: a worker killed mid-build left
        them. A build still running is younger than that, so concurrent builds never remove
        each other's."""
        oldest = time.time() - timeout - BUILD_LEFTOVER_MARGIN_SECONDS
        label = f"{HELPER}=build"
        for container in list_containers(client, all=True, filters={"label": label}):
            if container.name.startswith("sp-build-") and _created(container.attrs.get("Created")) < oldest:
                self._remove_build(client, container.name.removesuffix("-proxy"))
        for volume in client.volumes.list(filters={"label": label}):
            if volume.name.startswith("sp-build-") and _created(volume.attrs.get("CreatedAt")) < oldest:
                try:
                    volume.remove(force=True)
                except NotFound:
                    pass
                except APIError as exc:
                    if exc.status_code != 409:  # still mounted: its container goes first
                        raise
        for network in client.networks.list(filters={"label": label}):
            if network.name.startswith("sp-build-") and _created(network.attrs.get("Created")) < oldest:
                self._remove_build(client, network.name)

    def _remove_build(self, client: docker.DockerClient, name: str) -> None:
        for container_name in (name, f"{name}-proxy"):
            try:
                self._remove_container(client.containers.get(container_name))
            except NotFound:
                pass
        try:
            client.volumes.get(name).remove(force=True)
        except NotFound:
            pass
        try:
            client.networks.get(name).remove()
        except NotFound:
            pass

    def _helper_image(self, client: docker.DockerClient) -> str:
        """Any image on the host will do for a container that is never started."""
        for image in client.images.list():
            if image.tags:
                return str(image.tags[0])
        raise BackendError("no image on the host to unpack content with", permanent=False)

    # --- backups (stacks.runtime.backups drives these) -----------------------------------------
    def dump(
        self,
        spec: StackSpec,
        state: dict[str, Any],
        component: str,
        method: str,
        volume: str = "",
        log: Any = print,
    ) -> Iterator[bytes]:
        """Stream a consistent backup of one component, taken by a helper container of the
        component's own image on the stack's network while the component keeps running
        (``BACKUP_METHODS``): a logical dump of a database, Redis's own snapshot, RabbitMQ's
        definitions (asked of the running broker: its CLI talks to loopback only) or a tar
        of a file ``volume``. The iterator raises ``BackendError`` at its end when the dump
        failed, so a consumer that stops there has no half backup."""
        comp = self._component(spec, component)
        client = self.client(self.place(spec, state))
        if method == "rabbitmq":
            yield self._broker_definitions(client, spec.key, comp)
            return
        command, caps, user = self._dump_command(spec, state, comp, method, volume)
        name = f"sp-{spec.key}-{comp.name}-dump"
        mounts = {}
        if method == "files":
            mounts[self._volume_of(spec, comp, volume)] = {"bind": "/backup", "mode": "ro"}
        helper = self._backup_helper(
            client,
            spec,
            state,
            comp,
            name,
            command,
            mounts=mounts,
            caps=caps,
            user=user,
            network=method != "files",
            unique=True,  # a scheduled and a manual backup may dump the same component at once
        )
        errors = bytearray()
        try:
            stream = client.api.attach(
                helper.id, stdout=True, stderr=True, stream=True, logs=False, demux=True
            )
            helper.start()
            size = 0
            for out, err in stream:
                if err and len(errors) < 8192:
                    errors += err
                if out:
                    size += len(out)
                    yield out
            code = int(helper.wait(timeout=600).get("StatusCode", 1))
            if code != 0:
                detail = errors.decode(errors="replace").strip()[-500:]
                raise BackendError(
                    f"the backup of {comp.name} failed (exit {code}): {detail}", permanent=False
                )
            log(f"{comp.name}: {size} bytes dumped ({method})")
        except (APIError, DockerException, OSError) as exc:
            raise _wrap(exc, f"dumping {comp.name}") from exc
        finally:
            self._remove_container(helper)

    def restore(
        self,
        spec: StackSpec,
        state: dict[str, Any],
        component: str,
        method: str,
        chunks: Iterable[bytes],
        token: str,
        volume: str = "",
        log: Any = print,
    ) -> list[str]:
        """Replace a component's data in place by a backup (``chunks``, as ``dump`` gave
        them). The backup is loaded into fresh volumes first (a database by a temporary
        server of the same image, the dump streamed into its own client); a failure there
        removes them and leaves the running data as it was. Then the component is stopped,
        its current data copied into *kept* volumes (named by ``token``), the restored data
        put in its place, and it is started again. A PostgreSQL volume with room for both
        is restored within itself instead, by renames (``_restore_within``). Returns the
        kept volumes (or folders; empty when the component had no data yet):
        ``undo_restore`` puts them back, ``drop_kept`` removes them once the customer keeps
        the restored data."""
        comp = self._component(spec, component)
        if not re.match(r"^[a-z0-9]{1,24}$", token):
            raise BackendError(f"invalid restore token {token!r}", permanent=True)
        home = self.place(spec, state)
        client = self.client(home)
        if method == "rabbitmq":
            self._import_definitions(client, spec.key, comp, b"".join(chunks), log)
            return []
        volumes = [v for v in comp.volumes if method != "files" or v.name == volume]
        if not volumes:
            raise BackendError(f"{comp.name} has no volume {volume or 'to restore'}", permanent=True)
        live = [self._volume_of(spec, comp, v.name) for v in volumes]
        scratch = [f"{name}-r{token}" for name in live]
        kept = [f"{name}-k{token}" for name in live]
        try:
            if method == "postgresql" and len(volumes) == 1 and not volumes[0].shared:
                within = self._restore_within(
                    client, spec, state, comp, volumes[0], live[0], token, chunks, log
                )
                if within is not None:
                    return within
            for name in scratch:
                self._remove_volume(client, name)  # a leftover of an interrupted run
                client.volumes.create(name, labels={LABEL: spec.key})
            self._load(client, spec, state, comp, method, volumes, scratch, chunks, log)
            for name, volume_spec in zip(live, volumes, strict=True):
                # A new environment's volumes are made here: with their size (and a stack
                # volume with its owner), as a deploy would have made them.
                if volume_spec.shared:
                    self._ensure_stack_volume(client, spec, comp, volume_spec)
                else:
                    self._ensure_volume(client, spec.key, name, volume_spec.size_gb)
            running = self._running_of(client, spec.key, comp.name) if comp.stateful else []
            for container in running:
                log(f"stopping {container.name} to put the restored data in place")
                self._stop_container(container)
            had_data = self._swap(client, spec, comp, live, kept, scratch, log)
            self._start_on_restored(running, comp, log)
        except (APIError, DockerException, OSError) as exc:
            raise _wrap(exc, f"restoring {comp.name}") from exc
        finally:
            for name in scratch:
                self._remove_volume(client, name)
        log(
            f"{comp.name}: restored"
            + (f"; the previous data is kept in {', '.join(kept)}" if had_data else "")
        )
        return kept if had_data else []

    def _restore_within(
        self,
        client: docker.DockerClient,
        spec: StackSpec,
        state: dict[str, Any],
        comp: ComponentSpec,
        volume: Any,
        live: str,
        token: str,
        chunks: Iterable[bytes],
        log: Any,
    ) -> list[str] | None:
        """A PostgreSQL restore with no copy, when the live volume has room for the restored
        data next to its own (``WITHIN_PREPARE_SCRIPT``): the temporary server loads the
        dump into a folder of the live volume (the running server never looks there), then
        the component is stopped, its data renamed into a *kept* folder of the same volume
        and the restored data renamed into place (``WITHIN_SWAP_SCRIPT``: no copy), and it
        is started again. A failed load removes the folder and leaves the data as it was.
        Returns the kept name as ``restore`` does (``<live>-k<token>``, a folder, not a
        volume); None (nothing read of ``chunks``) when there is no room or no volume yet:
        the caller restores through scratch volumes."""
        try:
            client.volumes.get(live)
        except NotFound:
            return None
        self._ensure_volume(client, spec.key, live, volume.size_gb)  # attached after a host restart
        inner, kept = f"{WITHIN_RESTORE}{token}", f"{WITHIN_KEPT}{token}"
        code, out = self._run_copy(client, spec, comp, {live: "/live"}, WITHIN_PREPARE_SCRIPT, [inner])
        if code == 3:
            log(f"{live} has no room for the restored data next to its own: restoring through a copy")
            return None
        if code != 0:
            raise BackendError(f"preparing the restore of {comp.name} failed: {out}", permanent=True)
        swapped, running = False, []
        try:
            pgdata = f"{volume.path.rstrip('/')}/{inner}"
            self._load(client, spec, state, comp, "postgresql", [volume], [live], chunks, log, pgdata=pgdata)
            running = self._running_of(client, spec.key, comp.name) if comp.stateful else []
            for container in running:
                log(f"stopping {container.name} to put the restored data in place")
                self._stop_container(container)
            code, out = self._run_copy(client, spec, comp, {live: "/live"}, WITHIN_SWAP_SCRIPT, [inner, kept])
            if code not in (20, 21):
                raise BackendError(
                    f"putting the restored data of {comp.name} in place failed: {out}", permanent=True
                )
            swapped = True
        finally:
            if not swapped:
                self._run_copy(client, spec, comp, {live: "/live"}, 'rm -rf -- "/live/$1"', [inner])
                for container in running:
                    container.start()  # on the data it had
        log(f"restored data in place in {live}")
        self._start_on_restored(running, comp, log)
        if code == 20:
            log(f"{comp.name}: restored")
            return []
        log(f"{comp.name}: restored; the previous data is kept in {live} ({kept})")
        return [f"{live}-k{token}"]

    def _kept_within(self, client: docker.DockerClient, name: str) -> tuple[str, str] | None:
        """(live volume, kept folder) when the kept data ``name`` is a folder of the live
        volume (``_restore_within``), None when it is a volume of its own."""
        try:
            client.volumes.get(name)
            return None
        except NotFound:
            live, _, token = name.rpartition("-k")
            return live, f"{WITHIN_KEPT}{token}"

    def undo_restore(
        self, spec: StackSpec, state: dict[str, Any], component: str, kept: list[str], log: Any = print
    ) -> None:
        """Put the data a restore replaced (``kept``, as ``restore`` returned) back in place."""
        comp = self._component(spec, component)
        client = self.client(self.place(spec, state))
        live = [k.rsplit("-k", 1)[0] for k in kept]
        try:
            running = self._running_of(client, spec.key, comp.name) if comp.stateful else []
            for container in running:
                self._stop_container(container)
            for source, target in zip(kept, live, strict=True):
                within = self._kept_within(client, source)
                if within is not None:
                    code, out = self._run_copy(
                        client, spec, comp, {target: "/live"}, WITHIN_UNDO_SCRIPT, [within[1]]
                    )
                    if code != 0:
                        raise BackendError(f"putting back {source} failed: {out}", permanent=True)
                    log(f"put {source} back into {target}")
                    continue
                self._copy_volume(client, spec, comp, source, target, log)
            for container in running:
                container.start()
            if running:
                self._wait_healthy(client, spec.key, [c.name for c in running], log)
        except (APIError, DockerException, OSError) as exc:
            raise _wrap(exc, f"putting back the data of {comp.name}") from exc
        self.drop_kept(spec.key, state, kept)

    def drop_kept(self, key: str, state: dict[str, Any], kept: list[str]) -> None:
        """Remove the volumes a restore kept (the customer keeps the restored data)."""
        client = self.client(self.place_of(state))
        for name in kept:
            if not name.startswith(f"sp-{key}-"):
                raise BackendError(f"{name} is not a volume of {key}", permanent=True)
            within = self._kept_within(client, name)
            if within is None:
                self._remove_volume(client, name)
                continue
            live, folder = within
            try:
                client.volumes.get(live)
            except NotFound:
                continue  # gone with its volume
            users = list_containers(client, all=True, filters={"volume": live, "label": f"{LABEL}={key}"})
            if not users:
                raise BackendError(f"no container of {key} mounts {live} any more", permanent=True)
            code, out = self._run_root(
                client,
                key,
                f"{live}-drop",
                users[0].image.id,
                {live: "/live"},
                'rm -rf -- "/live/$1"',
                [folder],
            )
            if code != 0:
                raise BackendError(f"removing the kept data in {live} failed: {out}", permanent=True)

    def check_dump(
        self, spec: StackSpec, state: dict[str, Any], component: str, method: str, chunks: Iterable[bytes]
    ) -> None:
        """``pg_restore --list`` of the upload, in a helper of the component's own image (the
        same version: an older pg_restore cannot read a newer archive), with no network and
        no volume: it reads the archive's header and table of contents, and touches nothing."""
        comp = self._component(spec, component)
        if method != "postgresql":
            raise BackendError(f"no check for {method} files", permanent=True)
        client = self.client(self.place(spec, state))
        command = {"cmd": ["pg_restore", "--list", "-f", "/dev/null"], "env": {}}
        try:
            helper = self._backup_helper(
                client, spec, state, comp, f"sp-{spec.key}-{comp.name}-check", command,
                mounts={}, caps=[], user=comp.user, network=False, stdin=True, logs=True, unique=True,
            )  # fmt: skip
            try:
                self._feed(client, helper, chunks, "reading the dump")
            finally:
                self._remove_container(helper)
        except (APIError, DockerException, OSError) as exc:
            raise _wrap(exc, f"checking a dump for {comp.name}") from exc

    def remove_data(self, spec: StackSpec, state: dict[str, Any], component: str) -> None:
        """Remove the component's volumes as ``spec`` names them (an older data generation,
        kept after a dump-and-restore upgrade); refused while a container mounts one."""
        comp = self._component(spec, component)
        client = self.client(self.place(spec, state))
        names = {volume_name(spec.key, comp, v.name) for v in comp.volumes}
        try:
            for container in self._containers(client, spec.key):
                used = names & {m.get("Name") for m in container.attrs.get("Mounts") or []}
                if used:
                    raise BackendError(
                        f"{container.name} still uses {', '.join(sorted(used))}", permanent=True
                    )
            for name in sorted(names):
                self._remove_volume(client, name)
        except (APIError, DockerException) as exc:
            raise _wrap(exc, f"removing the old data of {comp.name}") from exc

    def place_of(self, state: dict[str, Any]) -> str:
        return str(state.get("host") or self.hosts[0].name)

    @staticmethod
    def _component(spec: StackSpec, name: str) -> ComponentSpec:
        comp = next((c for c in spec.components if c.name == name), None)
        if comp is None:
            raise BackendError(f"the stack has no component {name!r}", permanent=True)
        return comp

    @staticmethod
    def _volume_of(spec: StackSpec, comp: ComponentSpec, volume: str) -> str:
        found = next((v for v in comp.volumes if v.name == volume), None)
        if found is None:
            raise BackendError(f"{comp.name} has no volume {volume!r}", permanent=True)
        return volume_name(spec.key, comp, volume)

    def _running_of(self, client: docker.DockerClient, key: str, component: str) -> list[Any]:
        return [
            c
            for c in self._containers(client, key)
            if c.labels.get(COMPONENT) == component and HELPER not in c.labels and c.status == "running"
        ]

    @staticmethod
    def _remove_volume(client: docker.DockerClient, name: str) -> None:
        try:
            client.volumes.get(name).remove(force=True)
        except NotFound:
            pass

    def _dump_command(
        self, spec: StackSpec, state: dict[str, Any], comp: ComponentSpec, method: str, volume: str
    ) -> tuple[dict[str, Any], list[str], str]:
        env = dict(comp.env)
        host = self.slot_address(spec, state, comp, COLORS[0], 0)
        if method == "postgresql":
            command = [
                "pg_dump",
                "-h",
                host,
                "-U",
                env["STACKPORT_DB_USER"],
                "-d",
                env["STACKPORT_DB_NAME"],
                "-Fc",
                *pg_dump_compression(comp.version),
            ]
            return {"cmd": command, "env": {"PGPASSWORD": env["STACKPORT_DB_PASSWORD"]}}, [], comp.user
        if method == "mariadb":
            command = [
                "mariadb-dump", "-h", host, "-u", env["STACKPORT_DB_USER"], "--single-transaction",
                "--routines", "--triggers", "--hex-blob", "--no-tablespaces", env["STACKPORT_DB_NAME"],
            ]  # fmt: skip
            return {"cmd": command, "env": {"MYSQL_PWD": env["STACKPORT_DB_PASSWORD"]}}, [], comp.user
        if method == "redis":
            auth = (
                {"REDISCLI_AUTH": env["STACKPORT_REDIS_PASSWORD"]}
                if env.get("STACKPORT_REDIS_PASSWORD")
                else {}
            )
            return {"cmd": ["redis-cli", "-h", host, "--rdb", "-"], "env": auth}, [], comp.user
        if method == "files":
            self._volume_of(spec, comp, volume)
            command = ["tar", "--numeric-owner", "-C", "/backup", "-cf", "-", "."]
            return {"cmd": command, "env": {}}, ["DAC_READ_SEARCH"], "0"
        raise BackendError(f"no backup procedure {method!r}", permanent=True)

    def _backup_helper(
        self,
        client: docker.DockerClient,
        spec: StackSpec,
        state: dict[str, Any],
        comp: ComponentSpec,
        name: str,
        command: dict[str, Any],
        *,
        mounts: dict[str, Any],
        caps: list[str],
        user: str,
        network: bool,
        stdin: bool = False,
        logs: bool = False,
        unique: bool = False,
    ) -> Any:
        """A created (not started) helper of the component's image: hardened like a replica
        (no capabilities but ``caps``, read-only root, limits), no health check, not restarted,
        on the stack's network only when it must reach the component. A leftover of the same
        name (an interrupted run) is removed first; ``unique``: helpers that may run at once
        (two uploads checked, two dumps) get a random suffix instead, and only leftovers of
        that name older than ``HELPER_LEFTOVER_SECONDS`` are removed."""
        if unique:
            oldest = time.time() - HELPER_LEFTOVER_SECONDS
            filters = {"label": [f"{LABEL}={spec.key}", f"{HELPER}=backup"]}
            for leftover in list_containers(client, all=True, filters=filters):
                if (leftover.name == name or leftover.name.startswith(f"{name}-")) and _created(
                    leftover.attrs.get("Created")
                ) < oldest:
                    self._remove_container(leftover)
            name = f"{name}-{secrets.token_hex(4)}"
        else:
            try:
                self._remove_container(client.containers.get(name))
            except NotFound:
                pass
        self._ensure_image(client, comp.image)
        options = self.run_options(spec, comp, COLORS[1], 0, name)
        options.update(
            labels={LABEL: spec.key, HELPER: "backup", COMPONENT: comp.name},
            restart_policy={"Name": "no"},
            volumes=mounts,
            environment=command["env"],
            entrypoint=[command["cmd"][0]],
            command=command["cmd"][1:],
            user=user,
            cap_add=caps,
            extra_hosts={},
            log_config={"type": "json-file", "config": {"max-size": "1m", "max-file": "1"}}
            if logs
            else {"type": "none", "config": {}},
        )
        options.pop("healthcheck", None)
        if not network:
            options["network_disabled"] = True
        if stdin:
            options["stdin_open"] = True
        created = client.containers.create(self._ensure_image(client, comp.image), **options)
        if network:
            try:
                client.api.disconnect_container_from_network(created.id, "bridge")
            except APIError:
                pass
            self._ensure_network(self.place(spec, state), spec, state).connect(created)
        return created

    def _start_on_restored(self, running: list[Any], comp: ComponentSpec, log: Any) -> None:
        """Start the containers stopped for a restore again; BackendError unless they get ready."""
        for container in running:
            container.start()
        if running:
            problem = self._wait_ready(running, comp, log)
            if problem:
                raise BackendError(f"{comp.name} did not start on the restored data: {problem}")

    def _wait_ready(self, containers: list[Any], comp: ComponentSpec, log: Any) -> str:
        """'' once each of ``containers`` (started) answers the component's own health
        check, run in it every ``READY_POLL`` seconds (the engine runs it every 2 s only),
        else what is wrong: it stopped, or it did not answer within ``HEALTH_TIMEOUT``."""
        deadline = time.monotonic() + HEALTH_TIMEOUT
        for container in containers:
            while True:
                container.reload()
                if container.status != "running":
                    tail = container.logs(tail=8).decode(errors="replace").strip()
                    return f"{container.name} stopped" + (f"; last log lines:\n{tail}" if tail else "")
                if not comp.health or container.exec_run(list(comp.health)).exit_code == 0:
                    log(f"{container.name} is ready")
                    break
                if time.monotonic() > deadline:
                    return f"{container.name} did not answer its health check within {HEALTH_TIMEOUT}s"
                time.sleep(READY_POLL)
        return ""

    def _feed(self, client: docker.DockerClient, helper: Any, chunks: Iterable[bytes], what: str) -> None:
        """Start ``helper`` with ``chunks`` on its standard input; BackendError unless it exits 0."""
        sock = client.api.attach_socket(helper.id, params={"stdin": 1, "stream": 1})
        raw = getattr(sock, "_sock", sock)
        try:
            helper.start()
            for chunk in chunks:
                raw.sendall(chunk)
            raw.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it exited early (or read what it needed): its exit code and log say why
        finally:
            sock.close()
        code = int(helper.wait(timeout=3600).get("StatusCode", 1))
        if code != 0:
            tail = helper.logs(tail=12).decode(errors="replace").strip()
            raise BackendError(f"{what} failed (exit {code}): {tail[-500:]}", permanent=True)

    def _load(
        self,
        client: docker.DockerClient,
        spec: StackSpec,
        state: dict[str, Any],
        comp: ComponentSpec,
        method: str,
        volumes: list[Any],
        scratch: list[str],
        chunks: Iterable[bytes],
        log: Any,
        pgdata: str = "",
    ) -> None:
        """Fill the ``scratch`` volumes from the backup (PostgreSQL with ``pgdata``: the
        temporary server's data directory, a folder inside the mounted volume)."""
        mounts = {name: {"bind": v.path, "mode": "rw"} for name, v in zip(scratch, volumes, strict=True)}
        env = dict(comp.env)
        loader = f"sp-{spec.key}-{comp.name}-load"
        # A stack made afresh on a host that never ran it (a move off a lost host) has
        # nothing pulled there yet.
        self._ensure_image(client, comp.image)
        if method in ("postgresql", "mariadb"):
            temp_name = f"sp-{spec.key}-{comp.name}-restore"
            try:
                self._remove_container(client.containers.get(temp_name))
            except NotFound:
                pass
            options = self.run_options(spec, comp, COLORS[1], 0, temp_name)
            options.update(
                labels={LABEL: spec.key, HELPER: "restore"}, restart_policy={"Name": "no"}, volumes=mounts
            )
            if method == "postgresql":
                # A throwaway server that only loads the dump: no WAL for the tables the
                # load creates (-1 makes COPY into them skip it), no flushes. If it fails the
                # scratch volumes go; the clean shutdown below writes everything out.
                options["command"] = [arg for flag in TEMP_PG_SETTINGS for arg in ("-c", flag)]
                if pgdata:
                    options["environment"] = {**options["environment"], "PGDATA": pgdata}
            temp = client.containers.create(self._ensure_image(client, comp.image), **options)
            try:
                try:
                    client.api.disconnect_container_from_network(temp.id, "bridge")
                except APIError:
                    pass
                address = self.slot_address(spec, state, comp, COLORS[1], 0)
                self._ensure_network(self.place(spec, state), spec, state).connect(temp, ipv4_address=address)
                temp.start()
                problem = self._wait_ready([temp], comp, log)
                if problem:
                    raise BackendError(f"a fresh {comp.name} did not start: {problem}", permanent=True)
                if method == "postgresql":
                    restore_cmd = ["pg_restore", "-h", address, "-U", env["STACKPORT_DB_USER"]]
                    restore_cmd += ["-d", env["STACKPORT_DB_NAME"], "--no-owner", "--exit-on-error", "-1"]
                    load: dict[str, Any] = {
                        "cmd": restore_cmd,
                        "env": {"PGPASSWORD": env["STACKPORT_DB_PASSWORD"]},
                    }
                else:
                    load = {
                        "cmd": [
                            "mariadb",
                            "-h",
                            address,
                            "-u",
                            env["STACKPORT_DB_USER"],
                            env["STACKPORT_DB_NAME"],
                        ],
                        "env": {"MYSQL_PWD": env["STACKPORT_DB_PASSWORD"]},
                    }
                helper = self._backup_helper(
                    client, spec, state, comp, loader, load, mounts={}, caps=[], user=comp.user,
                    network=True, stdin=True, logs=True,
                )  # fmt: skip
                try:
                    log(f"loading the backup into a fresh {comp.name}")
                    self._feed(client, helper, chunks, f"loading the backup of {comp.name}")
                finally:
                    self._remove_container(helper)
                self._stop_container(temp)  # a clean shutdown writes everything out
            finally:
                self._remove_container(temp)
            return
        if method == "redis":
            target = volumes[0].path.rstrip("/")
            script = f'cat > "{target}/dump.rdb" && chown {comp.user}: "{target}/dump.rdb" "{target}"'
            cmd: dict[str, Any] = {"cmd": ["sh", "-c", script], "env": {}}
            caps, user = ["CHOWN", "DAC_OVERRIDE", "FOWNER"], "0"
        elif method == "files":
            target = volumes[0].path.rstrip("/")
            cmd = {"cmd": ["tar", "--numeric-owner", "-C", target, "-xpf", "-"], "env": {}}
            caps, user = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"], "0"
        else:
            raise BackendError(f"no restore procedure {method!r}", permanent=True)
        helper = self._backup_helper(
            client, spec, state, comp, loader, cmd, mounts=mounts, caps=caps, user=user,
            network=False, stdin=True, logs=True,
        )  # fmt: skip
        try:
            self._feed(client, helper, chunks, f"loading the backup of {comp.name}")
        finally:
            self._remove_container(helper)
        if method == "redis":
            self._redis_to_aof(client, spec, comp, mounts, log)

    def _redis_to_aof(
        self,
        client: docker.DockerClient,
        spec: StackSpec,
        comp: ComponentSpec,
        mounts: dict[str, Any],
        log: Any,
    ) -> None:
        """Redis with its append-only file on starts empty from an RDB alone: a temporary
        server loads the RDB with the append-only file off, writes the append-only file from
        it (CONFIG SET appendonly yes rewrites it) and shuts down cleanly."""
        name = f"sp-{spec.key}-{comp.name}-restore"
        try:
            self._remove_container(client.containers.get(name))
        except NotFound:
            pass
        options = self.run_options(spec, comp, COLORS[1], 0, name)
        options.update(
            labels={LABEL: spec.key, HELPER: "restore"},
            restart_policy={"Name": "no"},
            volumes=mounts,
            command=["--appendonly", "no"],
            network_disabled=True,
            extra_hosts={},
        )
        temp = client.containers.create(self._ensure_image(client, comp.image), **options)
        try:
            temp.start()
            problem = self._wait_healthy(client, spec.key, [name], log)
            if problem:
                raise BackendError(f"{comp.name} did not load the snapshot: {problem}", permanent=True)
            script = (
                "redis-cli config set appendonly yes >/dev/null || exit 1; "
                "for i in $(seq 1 3000); do info=$(redis-cli info persistence); "
                'case "$info" in *aof_rewrite_in_progress:1*|*aof_rewrite_scheduled:1*) sleep 0.2;; '
                '*) case "$info" in *aof_last_bgrewrite_status:ok*) exit 0;; *) exit 2;; esac;; '
                "esac; done; exit 3"
            )
            env = dict(comp.env)
            auth = (
                {"REDISCLI_AUTH": env["STACKPORT_REDIS_PASSWORD"]}
                if env.get("STACKPORT_REDIS_PASSWORD")
                else {}
            )
            result = temp.exec_run(["sh", "-c", script], environment=auth)
            if result.exit_code != 0:
                detail = (result.output or b"").decode(errors="replace").strip()[-300:]
                raise BackendError(
                    f"{comp.name} could not write its append-only file: {detail}", permanent=True
                )
            self._stop_container(temp)
            log(f"{comp.name}: snapshot loaded and written to the append-only file")
        finally:
            self._remove_container(temp)

    def _swap(
        self,
        client: docker.DockerClient,
        spec: StackSpec,
        comp: ComponentSpec,
        live: list[str],
        kept: list[str],
        scratch: list[str],
        log: Any,
    ) -> bool:
        """Copy each live volume into its kept one, then the scratch one into it. If the
        second copy fails the kept data is put back. True when there was data to keep.
        When the live volume has room for both, its data is first moved aside inside it and
        the two copies run at once; the old data goes once both are done (``SWAP_SCRIPT``)."""
        script = SWAP_SCRIPT
        had = False
        for live_name, kept_name, scratch_name in zip(live, kept, scratch, strict=True):
            self._ensure_volume(client, spec.key, live_name)
            self._remove_volume(client, kept_name)
            client.volumes.create(kept_name, labels={LABEL: spec.key, "org.stackport.kept": live_name})
            code, out = self._run_copy(
                client, spec, comp, {live_name: "/live", kept_name: "/kept", scratch_name: "/scratch"}, script
            )
            if code not in (20, 21):
                raise BackendError(
                    f"putting the restored data of {comp.name} in place failed: {out}", permanent=True
                )
            if code == 20:
                self._remove_volume(client, kept_name)
            had = had or code == 21
            log(f"restored data in place in {live_name}")
        return had

    def _copy_volume(
        self,
        client: docker.DockerClient,
        spec: StackSpec,
        comp: ComponentSpec,
        source: str,
        target: str,
        log: Any,
    ) -> None:
        script = "find /live -mindepth 1 -delete && cp -a /kept/. /live/"
        code, out = self._run_copy(client, spec, comp, {target: "/live", source: "/kept"}, script)
        if code != 0:
            raise BackendError(f"copying {source} into {target} failed: {out}", permanent=True)
        log(f"put {source} back into {target}")

    def _run_copy(
        self,
        client: docker.DockerClient,
        spec: StackSpec,
        comp: ComponentSpec,
        mounts: dict[str, str],
        script: str,
        args: list[str] | None = None,
    ) -> tuple[int, str]:
        """Run ``script`` as root (only the file capabilities, no network) in a container of
        the component's image with ``mounts`` (volume -> path); ``args`` are its $1, $2..."""
        return self._run_root(
            client, spec.key, f"sp-{spec.key}-{comp.name}-copy", comp.image, mounts, script, args
        )

    def _run_root(
        self,
        client: docker.DockerClient,
        key: str,
        name: str,
        image: str,
        mounts: dict[str, str],
        script: str,
        args: list[str] | None = None,
    ) -> tuple[int, str]:
        try:
            self._remove_container(client.containers.get(name))
        except NotFound:
            pass
        helper = client.containers.create(
            self._ensure_image(client, image),
            entrypoint=["sh", "-c", script, "sh", *(args or [])],
            name=name,
            user="0",
            labels={LABEL: key, HELPER: "copy"},
            volumes={v: {"bind": path, "mode": "rw"} for v, path in mounts.items()},
            cap_drop=["ALL"],
            cap_add=["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"],
            security_opt=["no-new-privileges:true"],
            read_only=True,
            network_disabled=True,
            mem_limit="256m",
            pids_limit=64,
        )
        try:
            helper.start()
            code = int(helper.wait(timeout=3600).get("StatusCode", 1))
            out = helper.logs(tail=8).decode(errors="replace").strip()
        finally:
            self._remove_container(helper)
        return code, out[-500:]

    def _broker_definitions(self, client: docker.DockerClient, key: str, comp: ComponentSpec) -> bytes:
        """RabbitMQ's definitions (users, vhosts, queues, exchanges, bindings, policies) as
        JSON, exported by the running broker (its CLI reaches the node on loopback only)."""
        running = self._running_of(client, key, comp.name)
        if not running:
            raise BackendError(f"{comp.name} is not running, so its definitions cannot be exported")
        result = running[0].exec_run(["rabbitmqctl", "-q", "export_definitions", "-"], demux=True)
        stdout, stderr = result.output
        if result.exit_code != 0 or not (stdout or b"").strip().startswith(b"{"):
            detail = (stderr or stdout or b"").decode(errors="replace").strip()[-500:]
            raise BackendError(f"exporting the definitions of {comp.name} failed: {detail}")
        return bytes(stdout)

    def _import_definitions(
        self, client: docker.DockerClient, key: str, comp: ComponentSpec, data: bytes, log: Any
    ) -> None:
        """Import definitions into the running broker (added to what it has; messages are
        not part of a definitions backup)."""
        try:
            json.loads(data)
        except ValueError as exc:
            raise BackendError("the backup is not a RabbitMQ definitions file", permanent=True) from exc
        running = self._running_of(client, key, comp.name)
        if not running:
            raise BackendError(f"{comp.name} is not running, so definitions cannot be imported")
        path = comp.volumes[0].path.rstrip("/")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(".stackport-definitions.json")
            # The engine writes what put_archive gets as root: readable by the broker's own
            # user, in its own data folder, for the seconds until it is removed below.
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))
        if not running[0].put_archive(path, buffer.getvalue()):
            raise BackendError("could not hand the definitions to the broker", permanent=True)
        file = f"{path}/.stackport-definitions.json"
        result = running[0].exec_run(["rabbitmqctl", "-q", "import_definitions", file], demux=True)
        running[0].exec_run(["rm", "-f", file])
        if result.exit_code != 0:
            detail = b"".join(x or b"" for x in result.output).decode(errors="replace").strip()
            raise BackendError(f"importing the definitions failed: {detail[-500:]}", permanent=True)
        log(f"{comp.name}: definitions imported")


def pg_dump_compression(version: str) -> list[str]:
    """pg_dump's compression for a backup of PostgreSQL ``version``: LZ4 from 16 on (fast
    enough that the dump is not slower than an uncompressed one, and restic then has a
    tenth of the bytes to chunk, hash and encrypt), gzip's fastest level before."""
    major = version.split(".", 1)[0]
    return ["-Z", "lz4"] if major.isdigit() and int(major) >= 16 else ["-Z", "1"]


def engine_client(url: str, *, timeout: float, tls: EngineTLS | None = None) -> docker.DockerClient:
    """A client of the engine at ``url``. tcp:// is spoken only with mutual TLS: an engine
    address on tcp without the portal's client certificate is refused here, never tried in
    the clear (docs/security.md, "Docker engines over TCP")."""
    options: dict[str, Any] = {}
    if url.startswith("tcp://"):
        if tls is None:
            raise BackendError(
                f"{url}: tcp engines are reached with TLS only, and no certificate is set", permanent=True
            )
        options["tls"] = docker.tls.TLSConfig(
            client_cert=(tls.client_cert, tls.client_key),
            ca_cert=tls.ca_cert if tls.verify else None,
            verify=tls.ca_cert if tls.verify else False,
        )
    try:
        if not options:
            return docker.DockerClient(base_url=url, version="auto", timeout=timeout)
        # The environment's CA bundle (REQUESTS_CA_BUNDLE) and proxies would replace the
        # engine's CA and route (psf/requests#3829): ask the version without them first.
        probe = docker.DockerClient(base_url=url, version="1.41", timeout=timeout, **options)
        probe.api.trust_env = False
        version = str(probe.version()["ApiVersion"])
        probe.close()
        client = docker.DockerClient(base_url=url, version=version, timeout=timeout, **options)
        client.api.trust_env = False
        return client
    except (DockerException, OSError, requests.exceptions.RequestException) as exc:
        raise _wrap(exc, f"the engine at {url} does not answer") from exc


def describe_host(url: str, timeout: float = 10, tls: EngineTLS | None = None) -> HostFacts:
    """The engine's id, kernel, CPUs and memory: a ping, then the engine's info, each
    within ``timeout`` seconds (the host health probe, and registration). ``BackendError``
    when it does not answer."""
    if not ENGINE_URL_RE.fullmatch(url):
        raise BackendError("this is not an engine address Stackport uses", permanent=True)
    try:
        client = engine_client(url, timeout=timeout, tls=tls)
        try:
            client.ping()
            info = client.info()
        finally:
            client.close()
    except (DockerException, OSError) as exc:
        raise _wrap(exc, f"the engine at {url} does not answer") from exc
    return HostFacts(
        engine_id=str(info.get("ID", ""))[:100],
        kernel_release=str(info.get("KernelVersion", ""))[:100],
        cpus=int(info.get("NCPU", 0)),
        memory_mb=int(info.get("MemTotal", 0)) // (1024 * 1024),
    )


def summary_replica(host: str, summary: dict[str, Any]) -> ReplicaState:
    """A replica from the engine's list summary: ``State`` is the container's status,
    ``Status`` ("Up 5 minutes (healthy)") carries the health check's verdict."""
    labels = summary.get("Labels") or {}
    state, text = str(summary.get("State") or ""), str(summary.get("Status") or "")
    if state == "running":
        if "(unhealthy)" in text:
            status = "unhealthy"
        elif "(health: starting)" in text:
            status = "starting"
        else:
            status = "running"
    else:
        status = state or "unknown"
    return ReplicaState(
        labels.get(COMPONENT, "?"),
        int(labels.get(INDEX, 0) or 0),
        host,
        status,
        None,
        labels.get(VERSION, ""),
        labels.get(SPEC, ""),
    )


def list_containers(client: docker.DockerClient, **options: Any) -> list[Any]:
    """``containers.list`` lists, then inspects each container: one removed in between
    (a helper, a replica another operation retires) makes it fail with NotFound. Listing
    again sees the engine after the removal."""
    for attempt in range(5):
        try:
            return list(client.containers.list(**options))
        except NotFound:
            if attempt == 4:
                raise
            time.sleep(0.1)
    return []


def _is_catalog_ref(ref: str) -> bool:
    parts = ref.split("@")[0].split("/")
    return len(parts) == 3 and (":" in parts[0] or "." in parts[0]) and parts[1] == "stackport"


def with_peer_addresses(value: str, peers: dict[str, str]) -> str:
    """``db:5432`` in a setting becomes ``10.225.7.50:5432`` when db runs on another host:
    not every client reads /etc/hosts (nginx asks Docker's DNS, which knows its host only)."""
    for name, address in peers.items():
        value = re.sub(rf"(?<![A-Za-z0-9.-]){re.escape(name)}(?=:[0-9])", address, value)
    return value


def peers_hash(peers: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(peers.items())).encode()).hexdigest()[:8]


def volume_name(key: str, comp: ComponentSpec, volume: str) -> str:
    """The engine's name of ``comp``'s volume ``volume``. A shared (stack) volume is the
    stack's, whichever component mounts it: ``sp-<key>--<volume>`` (component names never
    start with "-", so it cannot meet a component's own volume)."""
    if any(v.shared and v.name == volume for v in comp.volumes):
        return f"sp-{key}--{volume}"
    suffix = f"-g{comp.data_generation}" if comp.data_generation else ""
    return f"sp-{key}-{comp.name}-{volume}{suffix}"


def shares_volumes(comp: ComponentSpec) -> bool:
    return any(v.shared for v in comp.volumes)


BUILD_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
BUILD_NO_DNS = "127.0.0.1"  # no resolver listens there: a lookup fails at once
BUILD_PROXY_SOURCE = Path(build_proxy.__file__).read_text(encoding="utf-8")  # run by python3 -c
BUILD_PROXY_START_SECONDS = 20.0
# What pip, npm, composer and git read for their proxy (the build's only way out).
BUILD_PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "npm_config_proxy",
    "npm_config_https_proxy",
)


def _build_ranges(pool: ipaddress.IPv4Network | None) -> Iterator[ipaddress.IPv4Network]:
    """The /24s the builds' internal networks take /28s of: on a host with an address pool
    its last /24 (third octet 255, never a stack's); else the project supernet's /24s from
    its top end (the build network took the first free one)."""
    if pool is not None:
        yield ipaddress.IPv4Network((int(pool.broadcast_address) & ~0xFF, 24))
        return
    count = 2 ** (24 - PROJECT_SUPERNET.prefixlen)
    for i in range(count):
        yield ipaddress.IPv4Network((int(PROJECT_SUPERNET.network_address) + ((count - 1 - i) << 8), 24))


BUILD_LEFTOVER_MARGIN_SECONDS = 600  # past the build timeout: a build helper is a leftover
HELPER_LEFTOVER_SECONDS = 86400  # a backup helper with a random suffix older than this is a leftover
READY_POLL = 0.2  # seconds between health checks while a restore waits for a server
# A restore puts its data in place (``_swap``): /live's data copied into /kept, /scratch's
# into /live; exit 20 (/live was empty) or 21 on success, 10 (nothing kept) or 11 (the new
# data not in place) with /live's data as it was. With room for both in /live, its data is
# moved aside there (a rename) and both copies run at once; else one after the other.
SWAP_SCRIPT = r"""set -u
old=/live/.stackport-old
back() {
  find /live -mindepth 1 -maxdepth 1 ! -name .stackport-old -exec rm -rf -- {} +
  find "$old" -mindepth 1 -maxdepth 1 -exec mv -t /live -- {} + && rmdir "$old"
}
if [ -z "$(ls -A /live)" ]; then had=0; else had=1; fi
need=$(du -sk /scratch | cut -f1)
free=$(df -Pk /live | awk 'NR == 2 { print $4 }')
if [ $had = 1 ] && [ ! -e "$old" ] && [ "${free:-0}" -gt $((need + need / 10 + 65536)) ]; then
  mkdir "$old" || exit 10
  find /live -mindepth 1 -maxdepth 1 ! -name .stackport-old -exec mv -t "$old" -- {} + || { back; exit 10; }
  cp -a "$old/." /kept/ & keeping=$!
  cp -a /scratch/. /live/; put=$?
  wait $keeping; kept=$?
  if [ $kept = 0 ] && [ $put = 0 ]; then rm -rf "$old"; exit 21; fi
  back
  [ $kept = 0 ] && exit 11
  exit 10
fi
if [ $had = 1 ]; then cp -a /live/. /kept/ || exit 10; fi
find /live -mindepth 1 -delete && cp -a /scratch/. /live/ && exit $((20 + had))
find /live -mindepth 1 -delete; [ $had = 1 ] && cp -a /kept/. /live/; exit 11
"""
# A PostgreSQL restore inside the live volume (``_restore_within``): the folders it loads
# into and keeps the replaced data in, at the top of the volume (the data directory).
WITHIN_RESTORE = ".stackport-restore-"
WITHIN_KEPT = ".stackport-kept-"
_WITHIN_OWN = (
    "own() { find /live -mindepth 1 -maxdepth 1 ! -name '.stackport-restore-*' "
    "! -name '.stackport-kept-*' ! -name .stackport-old \"$@\"; }\n"
)
# $1: the folder to load into. Leftovers of interrupted restores go; exit 3 when the volume
# has no room for the restored data (about the size of its own) next to its data; else the
# folder is made, owned like the data.
WITHIN_PREPARE_SCRIPT = r"""set -u
find /live -mindepth 1 -maxdepth 1 -name '.stackport-restore-*' -exec rm -rf -- {} +
need=$(du -sk --exclude='.stackport-kept-*' /live | cut -f1)
free=$(df -Pk /live | awk 'NR == 2 { print $4 }')
[ "${free:-0}" -gt $((need + need / 10 + 65536)) ] || exit 3
ref=/live; [ -e /live/PG_VERSION ] && ref=/live/PG_VERSION
mkdir -m 700 "/live/$1" && chown "$(stat -c %u:%g "$ref")" "/live/$1"
"""
# $1: the loaded folder, $2: the kept folder. Renames only: the data into $2, $1's into
# place. Exit 20 (there was no data) or 21 on success; 10 or 11 with the data as it was.
WITHIN_SWAP_SCRIPT = (
    "set -u\n"
    + _WITHIN_OWN
    + r"""new="/live/$1"; old="/live/$2"
[ -s "$new/PG_VERSION" ] || exit 10
back() { find "$old" -mindepth 1 -maxdepth 1 -exec mv -t /live -- {} + && rmdir "$old"; }
if [ -z "$(own -print -quit)" ]; then had=0; else
  had=1
  mkdir -m 700 "$old" || exit 10
  own -exec mv -t "$old" -- {} + || { back; exit 10; }
fi
find "$new" -mindepth 1 -maxdepth 1 -exec mv -t /live -- {} + && rmdir "$new" && exit $((20 + had))
own -exec mv -t "$new" -- {} +
[ $had = 1 ] && back
exit 11
"""
)
# $1: the kept folder: the data in place goes, the kept data is renamed back.
WITHIN_UNDO_SCRIPT = (
    "set -u\n"
    + _WITHIN_OWN
    + r"""old="/live/$1"
[ -d "$old" ] || exit 10
own -exec rm -rf -- {} + || exit 11
find "$old" -mindepth 1 -maxdepth 1 -exec mv -t /live -- {} + && rmdir "$old"
"""
)
# The temporary PostgreSQL server a restore loads the dump into (thrown away if it fails).
TEMP_PG_SETTINGS = (
    "wal_level=minimal",
    "max_wal_senders=0",
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
)


def _created(value: Any) -> float:
    """The epoch seconds of an engine's "Created"/"CreatedAt" time (RFC 3339, nanoseconds);
    the current time when missing or unreadable (so it is never taken for a leftover)."""
    try:
        return datetime.fromisoformat(re.sub(r"\.\d+", "", str(value))).timestamp()
    except ValueError:
        return time.time()


def _image_uid(container: Any, user: str) -> int:
    """The numeric uid of the image's user (``www-data`` in the runtime images), read from
    the image's /etc/passwd through the engine; 0 when it is root or cannot be told."""
    name = user.split(":", 1)[0]
    if name.isdigit():
        return int(name)
    if name in ("", "root"):
        return 0
    try:
        stream, _ = container.get_archive("/etc/passwd")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.extractfile("passwd")
            text = member.read().decode("utf-8", "replace") if member else ""
    except (APIError, DockerException, tarfile.TarError, KeyError):
        return 0
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[0] == name and fields[2].isdigit():
            return int(fields[2])
    return 0


def _build_skeleton(uid: int, files: Sequence[tuple[str, bytes]]) -> io.BytesIO:
    """/build/app and /build/out owned by the build's user (the content lands in app/), and
    the extra files (read-only to it)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for folder in ("app", "out"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o755, uid, uid
            tar.addfile(info)
        for path, data in files:
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def content_volume(key: str, release: str) -> str:
    return f"sp-{key}-content-{release}"


def tar_directory(files: dict[str, bytes]) -> bytes:
    """A tar of regular files only (owner root, world-readable): what put_content expects."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), 0o644, 0, 0, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
