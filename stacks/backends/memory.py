"""The in-memory backend: the ``Backend`` interface with no engine behind it.

For fast unit tests of services and views only, never the proof that a feature works:
the real Docker engine tests are (``-m engine``, ``tests/stacks/test_operations.py``,
``test_hosts.py``, ``test_multihost.py``). Nothing here starts a process, checks health or
moves a byte of data; a replica is "running" because this module says so.

What it keeps of the real backend's contract:

- It is constructed like the Docker backend, by ``get_backend(path, hosts=[...])`` (so
  ``stacks.runtime.operations.backend_for`` builds it from the region's hosts), and with no
  host at all it refuses the same way. ``hosts=None`` means one host named ``memory``.
- Names derive from the stack key exactly as the Docker backend's (``sp-<key>-<component>-
  <colour><index>``, ``volume_name``, ``content_volume``), and so do subnets, stack numbers
  and slot addresses: the state it returns has the same keys the Docker backend's has
  (``host``, ``subnet`` on one host, ``number`` on routed hosts) plus ``hosts``, the hosts
  the stack's replicas run on (``stacks.catalog.offers.hosts_of`` reads it).
- Every method is idempotent: ``apply`` is find-or-create (repeating it changes nothing),
  ``destroy`` of a missing stack succeeds, invalid keys and releases are permanent
  ``BackendError``s, a stack whose home host is not among the hosts is a transient one.

Its state is process-global (``STACKS``, by stack key, and ``IMAGES``, by host) so a test
can look at it (``MemoryBackend.stack(key).containers``) or change it (a replica's
``status = "exited"``). Tests inject faults and seed what an engine would hold::

    MemoryBackend.fail_next("apply", BackendError("not healthy: web-a0", permanent=True))
    MemoryBackend.errors["logs"] = BackendError("Docker host h1 does not answer")  # until removed
    MemoryBackend.seed_logs("env-1", "web", ["env-1-web-a0 2026-12-02T10:00:01Z hello"])
    MemoryBackend.seed_samples("env-1", [ResourceSample("web", 0, 12.5, 50 * 2**20)])
    MemoryBackend.calls("logs")  # [("env-1", "web", 200)]
    MemoryBackend.reset()        # everything above, forgotten

Seeded log lines and samples are what the engine would hand back, returned whether or not
``apply`` ran. The ``memory_backend`` fixture of ``tests/conftest.py`` points every region
at this backend and resets it around a test.
"""

from __future__ import annotations

import io
import ipaddress
import re
import tarfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO, ClassVar

from stacks.backends.base import (
    Backend,
    BackendError,
    BuildJob,
    ComponentSpec,
    Drain,
    HostFacts,
    HostRecord,
    Observed,
    ReplicaState,
    ResourceSample,
    StackSpec,
    VolumeUsage,
)
from stacks.backends.docker import (
    COLORS,
    FIRST_SLOT,
    KEY_RE,
    MAX_REPLICAS,
    SLOTS_PER_COMPONENT,
    DockerBackend,
    HostPlacement,
    content_volume,
    subnet_candidates,
    volume_name,
)

RELEASE_RE = re.compile(r"^[a-z0-9]{1,32}$")
DEFAULT_HOST = "memory"
GIB = 1024**3
# The public methods of the interface: what calls are recorded for and faults injected into.
METHODS = frozenset(
    {
        "apply",
        "observe",
        "destroy",
        "logs",
        "samples",
        "put_content",
        "migrate_data",
        "check_dump",
        "upstreams",
        "stacks",
        "prune_images",
        "prune_content",
        "volume_usage",
        "dump",
        "restore",
        "undo_restore",
        "drop_kept",
    }
)


@dataclass
class MemoryContainer:
    """One replica as the engine would hold it."""

    name: str
    component: str
    index: int
    color: str
    host: str
    image: str
    version: str
    spec_hash: str
    status: str = "running"  # set it to "exited" / "unhealthy" to simulate a failure
    volumes: tuple[str, ...] = ()


@dataclass
class MemoryStack:
    """Everything of one stack (by key): what ``apply`` made and what a test seeded."""

    key: str
    containers: dict[str, MemoryContainer] = field(default_factory=dict)  # by name
    networks: dict[str, str] = field(default_factory=dict)  # host -> subnet
    volumes: dict[str, set[str]] = field(default_factory=dict)  # host -> volume names
    content: dict[str, dict[str, bytes]] = field(default_factory=dict)  # host -> release -> tar
    migrations: list[tuple[str, int, int]] = field(default_factory=list)  # component, from, to
    logs: dict[str, dict[int, list[str]]] = field(default_factory=dict)  # component -> replica -> lines
    samples: list[ResourceSample] | None = None  # seeded; None: one idle sample per replica
    spec: StackSpec | None = None  # the last spec applied
    state: dict[str, Any] = field(default_factory=dict)  # the last state returned
    volume_sizes: dict[str, int | None] = field(default_factory=dict)  # volume -> GB it was made with
    volume_used: dict[str, int] = field(default_factory=dict)  # volume -> bytes (seeded)
    # Backups: (component, method, volume) -> the bytes ``dump`` streams and ``restore``
    # replaces (seed them like an engine's data); kept copies of replaced data by volume name.
    data: dict[tuple[str, str, str], bytes] = field(default_factory=dict)
    kept: dict[str, bytes] = field(default_factory=dict)

    def empty(self) -> bool:
        return not (self.containers or self.networks or any(self.volumes.values()) or self.content)


STACKS: dict[str, MemoryStack] = {}
IMAGES: dict[str, set[str]] = {}  # host -> image references pulled there
CALLS: list[tuple[str, tuple[Any, ...]]] = []
ERRORS: dict[str, BaseException] = {}  # method -> raised by every call until removed
NEXT: dict[str, list[BaseException]] = {}  # method -> raised once each, in order
DOWN: set[str] = set()  # hosts that do not answer (``MemoryBackend.take_down``)
LOCK = threading.RLock()  # live_server tests read from another thread


def _is_catalog_ref(ref: str) -> bool:
    parts = ref.split("@")[0].split("/")
    return len(parts) == 3 and (":" in parts[0] or "." in parts[0]) and parts[1] == "stackport"


class MemoryBackend(HostPlacement, Backend):
    """Runs nothing; remembers everything. ``hosts`` as the Docker backend takes them:
    [HostRecord(...)]."""

    errors: ClassVar[dict[str, BaseException]] = ERRORS

    def __init__(
        self,
        hosts: list[HostRecord] | None = None,
        edge_pickup: float = 0.0,
        dns_drain: float = 0.0,
    ) -> None:
        if hosts is None:
            hosts = [HostRecord(DEFAULT_HOST, f"memory://{DEFAULT_HOST}")]
        if not hosts:
            raise BackendError("no Docker host is available in this region", permanent=False)
        self.hosts = hosts
        self.edge_pickup = edge_pickup  # accepted like the Docker backend's; nothing waits here
        self.dns_drain = dns_drain

    # --- for tests ----------------------------------------------------------------------------
    @staticmethod
    def reset() -> None:
        """Forget every stack, image, recorded call, fault and seeded line."""
        with LOCK:
            STACKS.clear()
            IMAGES.clear()
            CALLS.clear()
            ERRORS.clear()
            NEXT.clear()
            DOWN.clear()

    @staticmethod
    def fail_next(method: str, error: BaseException) -> None:
        """The next call of ``method`` raises ``error`` (before it changes anything)."""
        if method not in METHODS:
            raise ValueError(f"{method!r} is not a backend method: one of {sorted(METHODS)}")
        with LOCK:
            NEXT.setdefault(method, []).append(error)

    @staticmethod
    def calls(method: str | None = None) -> list[tuple[Any, ...]]:
        """The calls made so far: of ``method`` its arguments (``logs``: key, component,
        tail), else (method, arguments) of every call."""
        with LOCK:
            if method is None:
                return [(name, *args) for name, args in CALLS]
            return [args for name, args in CALLS if name == method]

    @staticmethod
    def stack(key: str) -> MemoryStack:
        """The stack's record (created empty when missing)."""
        with LOCK:
            return STACKS.setdefault(key, MemoryStack(key))

    @staticmethod
    def seed_logs(key: str, component: str, lines: list[str], replica: int = 0) -> None:
        """Append lines to what replica ``replica`` of ``component`` printed. ``logs`` returns
        them as given, so write them as the backend gives them: ``<replica> <timestamp> <text>``."""
        with LOCK:
            stack = STACKS.setdefault(key, MemoryStack(key))
            stack.logs.setdefault(component, {}).setdefault(replica, []).extend(lines)

    @staticmethod
    def clear_logs(key: str, component: str | None = None) -> None:
        with LOCK:
            stack = STACKS.setdefault(key, MemoryStack(key))
            if component is None:
                stack.logs.clear()
            else:
                stack.logs.pop(component, None)

    @staticmethod
    def seed_samples(key: str, samples: list[ResourceSample]) -> None:
        """What ``samples`` returns for the stack from now on (instead of idle ones)."""
        with LOCK:
            STACKS.setdefault(key, MemoryStack(key)).samples = [replace(s) for s in samples]

    @staticmethod
    def take_down(host: str) -> None:
        """``host`` stops answering (a lost machine): its probe fails, and so does every
        call of a backend that uses it; what ran there stays, as on a real engine."""
        with LOCK:
            DOWN.add(host)

    @staticmethod
    def bring_up(host: str) -> None:
        with LOCK:
            DOWN.discard(host)

    @staticmethod
    def describe_host(url: str, timeout: float = 10, tls: Any = None) -> HostFacts:
        """The host health probe (``stacks.backends.docker.describe_host``'s counterpart):
        ``memory://<name>`` answers unless it was taken down."""
        name = url.removeprefix("memory://")
        with LOCK:
            CALLS.append(("describe_host", (name,)))
            if name in DOWN:
                raise BackendError(f"the engine at {url} does not answer: timed out", permanent=False)
        return HostFacts(engine_id=f"memory-{name}", kernel_release="", cpus=4, memory_mb=8192)

    @staticmethod
    def seed_volume_usage(key: str, volume: str, used_bytes: int) -> None:
        """What ``volume_usage`` reports as used for the named volume (``volume_name``)."""
        with LOCK:
            STACKS.setdefault(key, MemoryStack(key)).volume_used[volume] = used_bytes

    def volume_usage(self, spec: StackSpec, state: dict[str, Any]) -> list[VolumeUsage]:
        """The stack's volumes that exist: seeded bytes used (else 0), and the size each was
        made with (None: no limit)."""
        self._enter("volume_usage", spec.key)
        with LOCK:
            stack = STACKS.get(spec.key)
            if stack is None:
                return []
            made = stack.volumes.get(self.place(spec, state), set())
            result = []
            for comp in spec.components:
                for v in comp.volumes:
                    name = volume_name(spec.key, comp, v.name)
                    if name in made:
                        size = stack.volume_sizes.get(name)
                        used = stack.volume_used.get(name, 0)
                        result.append(VolumeUsage(comp.name, v.name, used, size * GIB if size else None))
            return result

    def _enter(self, method: str, *args: Any) -> None:
        """Record the call, then raise an injected fault if there is one."""
        with LOCK:
            CALLS.append((method, args))
            lost = sorted(DOWN & set(self.names))
            if lost and method != "upstreams":
                raise BackendError(f"Docker host {lost[0]} does not answer", permanent=False)
            queued = NEXT.get(method)
            if queued:
                raise queued.pop(0)
            if method in ERRORS:
                raise ERRORS[method]

    # --- hosts and addresses (as the Docker backend) ------------------------------------------
    @property
    def names(self) -> list[str]:
        return [str(h.name) for h in self.hosts]

    def _require_host(self, host: str) -> str:
        if host not in self.names:
            raise BackendError(f"Docker host {host!r} is not available", permanent=False)
        return host

    def slot_address(
        self, spec: StackSpec, state: dict[str, Any], comp: ComponentSpec, color: str, index: int
    ) -> str:
        position = [c.name for c in spec.components].index(comp.name)
        offset = FIRST_SLOT + position * SLOTS_PER_COMPONENT + COLORS.index(color) * MAX_REPLICAS + index
        return str(self.subnet(state, self.host_of(spec, state, comp, index)).network_address + offset)

    def _free_number(self, spec: StackSpec) -> int:
        used = set()
        for stack in STACKS.values():
            if stack.key == spec.key:
                continue
            for host, subnet in stack.networks.items():
                pool = self._pool(host) if host in self.names else None
                if pool and ipaddress.IPv4Network(subnet).subnet_of(pool):
                    used.add(int(ipaddress.IPv4Network(subnet).network_address) >> 8 & 0xFF)
        for step in range(254):
            number = (spec.number + step) % 254 + 1
            if number not in used:
                return number
        raise BackendError("no free stack network number left on these hosts", permanent=False)

    def _ensure_network(self, stack: MemoryStack, host: str, spec: StackSpec, state: dict[str, Any]) -> None:
        """The stack's network on ``host``: found (its subnet recorded) or made."""
        if host in stack.networks:
            if not self.multi_host:
                state["subnet"] = stack.networks[host]
            return
        if self.multi_host:
            stack.networks[host] = str(self.subnet(state, host))
            return
        used = [
            ipaddress.IPv4Network(subnet)
            for other in STACKS.values()
            for on, subnet in other.networks.items()
            if on == host
        ]
        chosen = next(
            (c for c in subnet_candidates(spec.number) if not any(c.overlaps(u) for u in used)), None
        )
        if chosen is None:
            raise BackendError("no free project network left on the host", permanent=False)
        stack.networks[host] = state["subnet"] = str(chosen)

    # --- apply ----------------------------------------------------------------------------------
    def apply(
        self, spec: StackSpec, state: dict[str, Any], log: Any = print, drain: Drain | None = None
    ) -> dict[str, Any]:
        """Converge to ``spec`` at once: missing replicas made, stopped ones started, changed
        ones replaced (stateless ones in the other colour), extra ones removed."""
        self._enter("apply", spec.key)
        if not KEY_RE.match(spec.key):
            raise BackendError(f"invalid stack key {spec.key!r}", permanent=True)
        with LOCK:
            home = self._require_host(self.place(spec, state))
            new_state: dict[str, Any] = {"host": home}
            if self.multi_host:
                new_state["number"] = state.get("number") or self._free_number(spec)
            stack = STACKS.setdefault(spec.key, MemoryStack(spec.key))
            self._ensure_network(stack, home, spec, new_state)
            wanted = {c.name for c in spec.components}
            for name, container in list(stack.containers.items()):
                if container.host in self.names and container.component not in wanted:
                    log(f"removing {name} (component removed)")
                    del stack.containers[name]
            for comp in spec.components:
                self._converge_component(stack, spec, new_state, comp, log, drain)
            for host in {c.host for c in stack.containers.values()} - {home}:
                self._ensure_network(stack, host, spec, new_state)
            spread = sorted({c.host for c in stack.containers.values()} - {home})
            new_state["hosts"] = [home, *spread]
            stack.spec = spec
            stack.state = dict(new_state)
            return dict(new_state)

    def _converge_component(
        self,
        stack: MemoryStack,
        spec: StackSpec,
        state: dict[str, Any],
        comp: ComponentSpec,
        log: Any,
        drain: Drain | None = None,
    ) -> None:
        replicas = comp.replicas if spec.running else 0
        mine = sorted(  # what the engines of these hosts hold: another host's are not seen
            (c for c in stack.containers.values() if c.component == comp.name and c.host in self.names),
            key=lambda c: c.name,
        )
        wanted_hash = DockerBackend.spec_hash(spec, comp)
        if replicas == 0:
            for container in mine:
                log(f"stopping {container.name}")
                del stack.containers[container.name]
            return
        home = self.place(spec, state)
        volumes = tuple(volume_name(spec.key, comp, v.name) for v in comp.volumes)
        for v, name in zip(comp.volumes, volumes, strict=True):
            if name not in stack.volumes.get(home, set()):  # made once, with the size it has then
                stack.volume_sizes[name] = v.size_gb
            elif v.size_gb and v.size_gb > (stack.volume_sizes.get(name) or v.size_gb):
                stack.volume_sizes[name] = v.size_gb  # grown with a bigger plan, never shrunk
        stack.volumes.setdefault(home, set()).update(volumes)
        if spec.content_release and comp.content_path:
            volumes += (content_volume(spec.key, spec.content_release),)
        current = [c for c in mine if c.spec_hash == wanted_hash]
        stale = [c for c in mine if c.spec_hash != wanted_hash]
        if current:
            color = current[0].color
        elif comp.stateful or not stale:
            color = COLORS[0]
        else:
            stale_colors = {c.color for c in stale}
            color = COLORS[1] if COLORS[0] in stale_colors and COLORS[1] not in stale_colors else COLORS[0]
        by_index: dict[int, MemoryContainer] = {}
        for container in current:
            if container.color != color or container.index >= replicas:
                log(f"removing {container.name} (scaled down)")
                if drain is not None and comp.public_port:
                    address = self.slot_address(spec, state, comp, container.color, container.index)
                    drain([f"{address}:{comp.public_port}"], [])
                del stack.containers[container.name]
            elif container.host != self.host_of(spec, state, comp, container.index):
                stale.append(container)  # placement moved (hosts changed)
            else:
                by_index[container.index] = container
        for container in stale:
            if comp.stateful or container.color == color:
                log(f"replacing {container.name} (its spec changed)")
            else:
                log(f"draining and removing {container.name}")
                if drain is not None and comp.public_port:
                    address = self.slot_address(spec, state, comp, container.color, container.index)
                    drain([f"{address}:{comp.public_port}"], [])
            del stack.containers[container.name]
        for index in range(replicas):
            if index in by_index:
                container = by_index[index]
                if container.status != "running":
                    log(f"starting {container.name}")
                    container.status = "running"
                continue
            host = self._require_host(self.host_of(spec, state, comp, index))
            name = f"sp-{spec.key}-{comp.name}-{color}{index}"
            log(f"starting {name} on {host} ({comp.version or comp.image})")
            IMAGES.setdefault(host, set()).add(comp.image)
            stack.containers[name] = MemoryContainer(
                name, comp.name, index, color, host, comp.image, comp.version, wanted_hash, volumes=volumes
            )

    # --- observe / destroy / logs / samples ----------------------------------------------------
    def _replica(self, spec: StackSpec | None, state: dict[str, Any], c: MemoryContainer) -> ReplicaState:
        address = None
        comp = next((x for x in spec.components if x.name == c.component), None) if spec else None
        if spec and comp and comp.public_port:
            address = f"{self.slot_address(spec, state, comp, c.color, c.index)}:{comp.public_port}"
        return ReplicaState(c.component, c.index, c.host, c.status, address, c.version, c.spec_hash)

    def observe(self, spec: StackSpec, state: dict[str, Any]) -> Observed:
        self._enter("observe", spec.key)
        with LOCK:
            stack = STACKS.get(spec.key)
            found = [c for c in stack.containers.values() if c.host in self.names] if stack else []
            return Observed([self._replica(spec, state, c) for c in sorted(found, key=lambda c: c.name)])

    def stacks(self) -> dict[str, list[ReplicaState]]:
        self._enter("stacks")
        result: dict[str, list[ReplicaState]] = {}
        with LOCK:
            for key, stack in STACKS.items():
                for c in sorted(stack.containers.values(), key=lambda c: c.name):
                    if c.host in self.names:
                        result.setdefault(key, []).append(self._replica(None, {}, c))
        return result

    def destroy(self, key: str, state: dict[str, Any]) -> None:
        self._enter("destroy", key)
        if not KEY_RE.match(key):
            raise BackendError(f"invalid stack key {key!r}", permanent=True)
        with LOCK:
            stack = STACKS.get(key)
            if stack is None:
                return
            for host in self.names:
                for name in [n for n, c in stack.containers.items() if c.host == host]:
                    del stack.containers[name]
                stack.networks.pop(host, None)
                stack.volumes.pop(host, None)
                stack.content.pop(host, None)
            if not stack.containers:  # a copy on another host keeps its own data
                stack.data.clear()  # the volumes (and so the data) are gone
                stack.kept.clear()
            if stack.empty():
                del STACKS[key]

    # --- placement -----------------------------------------------------------------------------

    def logs(self, key: str, state: dict[str, Any], component: str, tail: int = 200) -> Iterator[str]:
        """The seeded lines of each replica of ``component``: the last ``tail`` of each."""
        self._enter("logs", key, component, tail)
        with LOCK:
            stack = STACKS.get(key)
            by_replica = dict(stack.logs.get(component, {})) if stack else {}
            chunks = [list(lines[-tail:]) if tail > 0 else [] for _, lines in sorted(by_replica.items())]
        for lines in chunks:
            yield from lines

    def samples(self, key: str, state: dict[str, Any]) -> list[ResourceSample]:
        """The seeded samples, else an idle one per running replica."""
        self._enter("samples", key)
        with LOCK:
            stack = STACKS.get(key)
            if stack is None:
                return []
            if stack.samples is not None:
                return [replace(s) for s in stack.samples]
            running = sorted(
                (c for c in stack.containers.values() if c.host in self.names and c.status == "running"),
                key=lambda c: c.name,
            )
            return [ResourceSample(c.component, c.index, 0.0, 0) for c in running]

    def prune_images(self, keep: set[str]) -> list[str]:
        self._enter("prune_images", frozenset(keep))
        removed = []
        with LOCK:
            for host in self.names:
                used = {c.image for s in STACKS.values() for c in s.containers.values() if c.host == host}
                for image in sorted(IMAGES.get(host, set())):
                    if image in used or image in keep or not _is_catalog_ref(image):
                        continue
                    IMAGES[host].discard(image)
                    removed.append(f"{host}:{image}")
        return removed

    def prune_content(self, keep: dict[str, set[str]]) -> list[str]:
        self._enter("prune_content", {k: frozenset(v) for k, v in keep.items()})
        removed = []
        with LOCK:
            for key, releases in keep.items():
                if (stack := STACKS.get(key)) is None:
                    continue
                for host in self.names:
                    mounted = {v for c in stack.containers.values() if c.host == host for v in c.volumes}
                    for release in sorted(stack.content.get(host, {})):
                        volume = content_volume(key, release)
                        if release not in releases and volume not in mounted:
                            del stack.content[host][release]
                            removed.append(f"{host}:{volume}")
        return removed

    def upstreams(self, spec: StackSpec, state: dict[str, Any]) -> list[str]:
        self._enter("upstreams", spec.key)
        public = [c for c in spec.components if c.public_port]
        return [
            f"{self.slot_address(spec, state, comp, color, index)}:{comp.public_port}"
            for comp in public
            for color in COLORS
            for index in range(MAX_REPLICAS)
        ]

    # --- content and data ----------------------------------------------------------------------
    def put_content(
        self,
        key: str,
        state: dict[str, Any],
        release: str,
        archive: BinaryIO,
        image: str | None = None,
        extras: Sequence[BinaryIO] = (),
    ) -> None:
        """Keep the archive once per host (a second call for the release changes nothing)."""
        self._enter("put_content", key, release)
        if not RELEASE_RE.match(release):
            raise BackendError(f"invalid release id {release!r}", permanent=True)
        archive.seek(0)
        data = archive.read()  # kept whole: this backend is a test double
        for extra in extras:  # the extras' members follow the content's (two tars concatenated)
            extra.seek(0)
            data = data.rstrip(b"\0") + extra.read()
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                tar.getmembers()
        except tarfile.TarError as exc:
            raise BackendError("the engine refused the content archive", permanent=True) from exc
        with LOCK:
            stack = STACKS.setdefault(key, MemoryStack(key))
            for host in self.names:
                stack.content.setdefault(host, {}).setdefault(release, data)
                if image:
                    IMAGES.setdefault(host, set()).add(image)

    def build(self, job: BuildJob, archive: BinaryIO, out: BinaryIO, log: Any = print) -> int:
        """A stand-in build: a requirement line naming ``nonexistent`` fails it the way pip
        does; otherwise the artifact is the output folder with one file naming the job."""
        self._enter("build", job.name, job.image)
        archive.seek(0)
        with tarfile.open(fileobj=archive, mode="r:") as tar:
            member = next((m for m in tar.getmembers() if m.name == "requirements.txt"), None)
            wanted = tar.extractfile(member).read().decode() if member else ""  # type: ignore[union-attr]
        log(f"building {job.name} with {job.image}")
        for line in wanted.splitlines():
            if "nonexistent" in line:
                log(f"ERROR: No matching distribution found for {line.strip()}")
                return 1
        folder = job.output.rstrip("/").rsplit("/", 1)[-1]
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(f"{folder}/BUILT")
            info.size = len(job.name)
            tar.addfile(info, io.BytesIO(job.name.encode()))
        out.write(buffer.getvalue())
        return 0

    # --- backups -------------------------------------------------------------------------------
    @staticmethod
    def seed_data(key: str, component: str, method: str, data: bytes, volume: str = "") -> None:
        """What ``dump`` of ``component`` streams (the component's data, as the engine has it)."""
        with LOCK:
            STACKS.setdefault(key, MemoryStack(key)).data[(component, method, volume)] = data

    def _data_component(self, spec: StackSpec, state: dict[str, Any], component: str) -> MemoryStack:
        if not any(c.name == component for c in spec.components):
            raise BackendError(f"the stack has no component {component!r}", permanent=True)
        self._require_host(self.place(spec, state))
        return STACKS.setdefault(spec.key, MemoryStack(spec.key))

    def dump(
        self,
        spec: StackSpec,
        state: dict[str, Any],
        component: str,
        method: str,
        volume: str = "",
        log: Any = print,
    ) -> Iterator[bytes]:
        """The seeded data (``seed_data``; else a line naming it), in 64 KiB chunks."""
        self._enter("dump", spec.key, component, method, volume)
        with LOCK:
            stack = self._data_component(spec, state, component)
            data = stack.data.get((component, method, volume))
        if data is None:
            data = f"memory {method} of {spec.key}/{component}{'/' + volume if volume else ''}\n".encode()
        for start in range(0, len(data), 65536):
            yield data[start : start + 65536]
        log(f"{component}: {len(data)} bytes dumped ({method})")

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
        """Replace the component's data by ``chunks``; the old data is kept under a name."""
        self._enter("restore", spec.key, component, method, token, volume)
        if not re.match(r"^[a-z0-9]{1,24}$", token):
            raise BackendError(f"invalid restore token {token!r}", permanent=True)
        data = b"".join(chunks)  # read first: a failing source changes nothing
        with LOCK:
            stack = self._data_component(spec, state, component)
            old = stack.data.get((component, method, volume))
            stack.data[(component, method, volume)] = data
            if old is None or method == "rabbitmq":
                return []
            kept = f"sp-{spec.key}-{component}-{volume or 'data'}-k{token}"
            stack.kept[kept] = old
            return [kept]

    def undo_restore(
        self, spec: StackSpec, state: dict[str, Any], component: str, kept: list[str], log: Any = print
    ) -> None:
        self._enter("undo_restore", spec.key, component, tuple(kept))
        with LOCK:
            stack = self._data_component(spec, state, component)
            for name in kept:
                if name in stack.kept:
                    key = next((k for k in stack.data if k[0] == component), None)
                    if key is not None:
                        stack.data[key] = stack.kept.pop(name)

    def check_dump(
        self, spec: StackSpec, state: dict[str, Any], component: str, method: str, chunks: Iterable[bytes]
    ) -> None:
        """A PostgreSQL dump starts with pg_dump's custom-format mark; nothing else is read."""
        self._enter("check_dump", spec.key, component, method)
        self._data_component(spec, state, component)
        data = b"".join(chunks)
        if method != "postgresql" or not data.startswith(b"PGDMP"):
            raise BackendError(
                "pg_restore: error: input file does not appear to be a valid archive", permanent=True
            )

    def drop_kept(self, key: str, state: dict[str, Any], kept: list[str]) -> None:
        self._enter("drop_kept", key, tuple(kept))
        with LOCK:
            stack = STACKS.get(key)
            for name in kept:
                if stack is not None:
                    stack.kept.pop(name, None)

    def remove_data(self, spec: StackSpec, state: dict[str, Any], component: str) -> None:
        self._enter("remove_data", spec.key, component)
        comp = next((c for c in spec.components if c.name == component), None)
        if comp is None:
            raise BackendError(f"the stack has no component {component!r}", permanent=True)
        names = {volume_name(spec.key, comp, v.name) for v in comp.volumes}
        with LOCK:
            home = self._require_host(self.place(spec, state))
            stack = STACKS.get(spec.key)
            if stack is not None:
                stack.volumes.get(home, set()).difference_update(names)

    def migrate_data(
        self, spec: StackSpec, state: dict[str, Any], old: ComponentSpec, new: ComponentSpec, log: Any = print
    ) -> None:
        """Make ``new``'s volumes and record the copy; the old volumes stay."""
        self._enter("migrate_data", spec.key, old.name, new.data_generation)
        if old.name != new.name or new.data_generation <= old.data_generation:
            raise BackendError("a data migration needs a new data generation", permanent=True)
        if not new.data_restore or not new.volumes:
            raise BackendError(f"no dump-and-restore procedure for {new.name}", permanent=True)
        with LOCK:
            home = self._require_host(self.place(spec, state))
            stack = STACKS.setdefault(spec.key, MemoryStack(spec.key))
            if not any(
                c.component == old.name and c.status == "running" and c.host == home
                for c in stack.containers.values()
            ):
                raise BackendError(f"dump and restore failed: {old.name} is not running", permanent=True)
            log(f"copying the data of {old.name} {old.version} into {new.version}")
            stack.volumes.setdefault(home, set()).update(
                volume_name(spec.key, new, v.name) for v in new.volumes
            )
            stack.migrations.append((new.name, old.data_generation, new.data_generation))
            log("dump restored into the new version")
