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
import tarfile
import time
from collections.abc import Iterator
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from stacks.backends.base import (
    Backend,
    BackendError,
    ComponentSpec,
    HostFacts,
    HostRecord,
    Observed,
    ReplicaState,
    ResourceSample,
    StackSpec,
)

KEY_RE = re.compile(r"^[a-z][a-z0-9-]{1,40}$")
LABEL = "org.stackport.stack"
HEALTH_TIMEOUT = 180
# Project networks come from 10.64.0.0/10 (16,384 /24s), apart from the engine's own pools.
PROJECT_SUPERNET = ipaddress.ip_network("10.64.0.0/10")
FIRST_SLOT = 10  # .10, .11, ... are replica slots; lower addresses are the gateway and spares
COLORS = ("a", "b")  # blue/green: a changed stateless component starts in the other colour
MAX_REPLICAS = 10  # per colour; settings.STACKPORT_MAX_REPLICAS may not exceed it
SLOTS_PER_COMPONENT = len(COLORS) * MAX_REPLICAS  # 12 components fit in a /24
EDGE_PICKUP = 2.5  # seconds: more than two of the edge's 1 s active health checks
DNS_DRAIN = 11.0  # seconds an internal component's old colour keeps serving (nginx resolver valid=10s)
STOP_TIMEOUT = 10  # seconds between the image's graceful STOPSIGNAL and SIGKILL
CRASH_LIMIT = 3  # restarts while starting before a container counts as failed
COMPONENT = "org.stackport.component"
INDEX = "org.stackport.index"
COLOR = "org.stackport.color"
SPEC = "org.stackport.spec"
VERSION = "org.stackport.version"
HELPER = "org.stackport.helper"
COMPLETE = "org.stackport.complete"


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
        replicas of the public component spread over them, routed between hosts."""
        return len(self.hosts) > 1 and all(h.pool for h in self.hosts)

    def host_of(self, spec: StackSpec, state: dict[str, Any], comp: ComponentSpec, index: int) -> str:
        """Where replica ``index`` of ``comp`` runs: the public component's replicas round-
        robin over the hosts, starting at the home host; everything else at home."""
        home = self.place(spec, state)
        if not self.multi_host or comp.stateful or not comp.public_port:
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
        return {"host": host}  # its network (and subnet) are made there


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
        self.hosts = hosts
        self.edge_pickup = edge_pickup
        self.dns_drain = dns_drain
        self._clients: dict[str, docker.DockerClient] = {}

    # --- engines -------------------------------------------------------------------------------
    def client(self, host: str | None = None) -> docker.DockerClient:
        host = host or self.hosts[0].name
        if host not in self._clients:
            url = next((h.url for h in self.hosts if h.name == host), None)
            if url is None:
                raise BackendError(f"Docker host {host!r} is not available", permanent=False)
            try:
                self._clients[host] = docker.DockerClient(base_url=url, version="auto", timeout=120)
            except DockerException as exc:
                raise _wrap(exc, f"Docker host {host} does not answer") from exc
        return self._clients[host]

    # --- apply ---------------------------------------------------------------------------------
    def apply(self, spec: StackSpec, state: dict[str, Any], log: Any = print) -> dict[str, Any]:
        """Converge to ``spec``. A stateless component whose spec changed goes blue/green:
        the new replicas start in the other colour's slots, and the old ones are removed
        only once every new one is healthy; if one is not, the new ones are removed, the
        old keep serving and BackendError says why. Stateful components are replaced in
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
            self._ensure_volume(self.client(home), spec.key, volume_name(spec.key, comp, volume.name))
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
            if container.labels.get(COLOR) != color or index >= replicas:
                log(f"removing {container.name} (scaled down)")
                self._stop_container(container)
                self._remove_container(container)
            elif host != self.host_of(spec, state, comp, index):
                stale.append((host, container))  # placement moved (hosts changed)
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
            return found[0]
        options = {"com.docker.network.bridge.enable_icc": "true"}
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
            chosen = next(free, None)
            if chosen is None:
                raise BackendError("no free project network left on the host", permanent=False)
            subnet = chosen
            state["subnet"] = str(subnet)
        ipam = docker.types.IPAMConfig(
            pool_configs=[docker.types.IPAMPool(subnet=str(subnet), gateway=str(subnet.network_address + 1))]
        )
        return client.networks.create(name, driver="bridge", ipam=ipam, labels={LABEL: key}, options=options)

    def _ensure_volume(self, client: docker.DockerClient, key: str, name: str) -> str:
        try:
            client.volumes.get(name)
        except NotFound:
            client.volumes.create(name, labels={LABEL: key})
        return name

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
        data = json.dumps(
            [repr(comp), spec.content_release if comp.content_path else None, spec.number],
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
        self._ensure_image(client, comp.image)
        log(f"starting {name} on {host} ({comp.version or comp.image})")
        try:  # a leftover of an interrupted run under the same name
            self._remove_container(client.containers.get(name))
        except NotFound:
            pass
        options = self.run_options(spec, comp, color, index, name, peers, spec_label)
        created = client.containers.create(comp.image, **options)
        try:
            client.api.disconnect_container_from_network(created.id, "bridge")
        except APIError:
            pass  # not attached to the default bridge
        network.connect(
            created, aliases=[comp.name], ipv4_address=self.slot_address(spec, state, comp, color, index)
        )
        created.start()

    def _ensure_image(self, client: docker.DockerClient, image: str) -> None:
        try:
            client.images.get(image)
        except ImageNotFound:
            repo, _, digest = image.partition("@")
            client.images.pull(repo, tag=digest or None)

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
        """dump-and-restore into fresh volumes: a temporary container of the new version
        starts on them (so it initialises an empty data directory with the same
        credentials), pulls a dump from the old container over the stack network with the
        new version's client, restores it and checks it. The old container and volumes
        are untouched; on any failure the new volumes are removed again."""
        if old.name != new.name or new.data_generation <= old.data_generation:
            raise BackendError("a data migration needs a new data generation", permanent=True)
        handler = DATA_MOVES.get(new.health[0] if new.health else "")
        if handler is None:
            raise BackendError(f"no dump-and-restore procedure for {new.name}", permanent=True)
        client = self.client(self.place(spec, state))
        volumes = [volume_name(spec.key, new, v.name) for v in new.volumes]
        temp = None
        try:
            network = self._ensure_network(self.place(spec, state), spec, state)
            for volume in volumes:
                self._ensure_volume(client, spec.key, volume)
            old_ip = self.slot_address(spec, state, old, COLORS[0], 0)
            name = f"sp-{spec.key}-{new.name}-migrate"
            try:
                self._remove_container(client.containers.get(name))
            except NotFound:
                pass
            self._ensure_image(client, new.image)
            options = self.run_options(spec, new, COLORS[1], 0, name)
            options["labels"] = {LABEL: spec.key, HELPER: "migrate"}
            options["restart_policy"] = {"Name": "no"}
            temp = client.containers.create(new.image, **options)
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
            handler(temp, old_ip, dict(new.env), log)
            self._stop_container(temp)
        except BackendError:
            self._cleanup_failed_move(client, temp, volumes)
            raise
        except (APIError, DockerException) as exc:
            self._cleanup_failed_move(client, temp, volumes)
            raise _wrap(exc, f"migrating {new.name}") from exc
        self._remove_container(temp)

    def _cleanup_failed_move(self, client: docker.DockerClient, temp: Any, volumes: list[str]) -> None:
        if temp is not None:
            self._remove_container(temp)
        for volume in volumes:
            try:
                client.volumes.get(volume).remove(force=True)
            except NotFound:
                pass

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
        result: dict[str, list[ReplicaState]] = {}
        for host in self.hosts:
            try:
                containers = list_containers(self.client(host.name), all=True, filters={"label": LABEL})
            except (APIError, DockerException) as exc:
                raise _wrap(exc, f"listing containers on {host.name}") from exc
            for c in containers:
                if HELPER not in c.labels:
                    result.setdefault(c.labels[LABEL], []).append(self._replica(None, {}, host.name, c))
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
                for v in client.volumes.list(filters={"label": f"{LABEL}={key}"}):
                    try:
                        v.remove(force=True)
                    except NotFound:
                        pass
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
            for image in client.images.list():
                refs = set(image.attrs.get("RepoDigests") or []) | set(image.tags)
                if image.id in used or refs & keep:
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

    # --- content -------------------------------------------------------------------------------
    def put_content(
        self, key: str, state: dict[str, Any], release: str, archive: bytes, image: str | None = None
    ) -> None:
        """Create (once) the read-only content volume of a release from a tar archive.

        The archive is unpacked by the engine (``put_archive`` into a created, never started
        helper container), so no shell and no customer-controlled path reaches a command line.
        """
        if not re.match(r"^[a-z0-9]{1,32}$", release):
            raise BackendError(f"invalid release id {release!r}", permanent=True)
        for host in self.hosts:  # a replica may run on any of them
            self._put_content(self.client(host.name), key, release, archive, image)

    def _put_content(
        self, client: docker.DockerClient, key: str, release: str, archive: bytes, image: str | None
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
                self._ensure_image(client, image)
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
            if not helper.put_archive("/content", archive):
                raise BackendError("the engine refused the content archive", permanent=True)
            self._remove_container(helper)
            helper = None
            client.volumes.create(marker, labels={LABEL: key, COMPLETE: "1"})
        except (APIError, DockerException) as exc:
            raise _wrap(exc, f"writing content of {key}") from exc
        finally:
            if helper is not None:
                self._remove_container(helper)

    def _helper_image(self, client: docker.DockerClient) -> str:
        """Any image on the host will do for a container that is never started."""
        for image in client.images.list():
            if image.tags:
                return str(image.tags[0])
        raise BackendError("no image on the host to unpack content with", permanent=False)


def describe_host(url: str) -> HostFacts:
    """The engine's id, kernel, CPUs and memory. ``BackendError`` when it does not answer."""
    try:
        client = docker.DockerClient(base_url=url, version="auto", timeout=10)
        try:
            info = client.info()
        finally:
            client.close()
    except (DockerException, OSError) as exc:
        raise _wrap(exc, f"the engine at {url}") from exc
    return HostFacts(
        engine_id=str(info.get("ID", ""))[:100],
        kernel_release=str(info.get("KernelVersion", ""))[:100],
        cpus=int(info.get("NCPU", 0)),
        memory_mb=int(info.get("MemTotal", 0)) // (1024 * 1024),
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
    suffix = f"-g{comp.data_generation}" if comp.data_generation else ""
    return f"sp-{key}-{comp.name}-{volume}{suffix}"


def content_volume(key: str, release: str) -> str:
    return f"sp-{key}-content-{release}"


def _pg_dump_restore(container: Any, old_ip: str, env: dict[str, str], log: Any) -> None:
    """PostgreSQL: pg_dump of the new major (reads older servers) piped into pg_restore."""
    user, db, password = env["STACKPORT_DB_USER"], env["STACKPORT_DB_NAME"], env["STACKPORT_DB_PASSWORD"]
    script = (
        'set -o pipefail; pg_dump -h "$OLD" -U "$U" -d "$D" -Fc --no-owner '
        '| pg_restore -h 127.0.0.1 -U "$U" -d "$D" --no-owner --exit-on-error'
    )
    result = container.exec_run(
        ["bash", "-c", script],
        environment={"OLD": old_ip, "U": user, "D": db, "PGPASSWORD": password},
        demux=True,
    )
    out = b"".join(x or b"" for x in result.output).decode(errors="replace").strip()
    if result.exit_code != 0:
        raise BackendError(f"dump and restore failed: {out[-500:]}", permanent=True)
    log("dump restored into the new version")


# Keyed by the component's health command (the catalog's contract names the tools).
DATA_MOVES: dict[str, Any] = {"pg_isready": _pg_dump_restore}


def tar_directory(files: dict[str, bytes]) -> bytes:
    """A tar of regular files only (owner root, world-readable): what put_content expects."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), 0o644, 0, 0, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
