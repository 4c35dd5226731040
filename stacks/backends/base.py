"""The backend interface: how Stackport makes stacks run, whatever runs them.

A backend is declarative. It is handed the desired spec of one stack (a project
environment) and converges to it; it reports what it observes; it destroys a stack; it
streams logs and samples resource use. It never reads the database: its bookkeeping
(container ids, object names, slot assignments) is returned to the caller as opaque JSON
and handed back on the next call. Every call is safe to repeat: names derive from our
ids, create means find-or-create, delete treats "not found" as success. Vendor errors
become one ``BackendError`` with a ``permanent`` flag.

Concrete backends are named by dotted path in ``settings.STACKPORT_BACKENDS`` and
resolved lazily (``stacks.backends.get_backend``), like Django's e-mail backends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, Self

from django.utils.module_loading import import_string

if TYPE_CHECKING:
    from stacks.backends.edge import Route
    from stacks.backends.edge_tls import CertificateInfo


# A backend calls it with the edge upstream addresses of the public replicas about to stop
# and of those that serve on (``Backend.apply``).
Drain = Callable[[list[str], list[str]], None]


class BackendError(Exception):
    """Anything the engine refused or failed at. ``permanent`` errors are not retried."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


@dataclass(frozen=True)
class VolumeSpec:
    name: str  # server-generated, e.g. "data"
    path: str
    # The volume's size from the plan (docs/backends.md, "Disk limits"): a volume is made
    # with it once and held to it by the engine; None: no limit. Out of repr: the spec hash
    # (and so the running containers) do not depend on it.
    size_gb: int | None = field(default=None, repr=False)
    # A stack volume (docs/backends.md, "Shared volumes"): one volume of the stack, named by
    # ``name`` alone, mounted by every component whose spec lists it (WordPress's uploads in
    # nginx and PHP-FPM), instead of a volume of this component only. Components that mount
    # one run on the stack's home host, where it lives.
    shared: bool = field(default=False, repr=False)


@dataclass
class VolumeUsage:
    """What one volume of a stack holds, measured on its host."""

    component: str
    volume: str  # the VolumeSpec's name
    used_bytes: int
    size_bytes: int | None  # the filesystem's size; None: a volume with no limit


@dataclass(frozen=True)
class ComponentSpec:
    """One component of a stack as it should run. Every value here is validated already."""

    name: str  # the service name others reach it by ("db", "web")
    image: str  # pinned by digest: registry/repo@sha256:...
    replicas: int
    cpus: float
    memory_mb: int
    pids: int
    user: str
    read_only: bool
    capabilities: tuple[str, ...] = ()
    tmpfs: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    volumes: tuple[VolumeSpec, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    health: tuple[str, ...] = ()  # exec-form health check command
    content_path: str | None = None  # where the release content volume is mounted
    public_port: int | None = None  # the port the edge routes to, if public
    stateful: bool = False  # keeps data in its volumes: replaced in place, never two at once
    data_generation: int = 0  # bumped by a data migration: new volumes, the old ones kept
    version: str = ""  # the catalog version, for labels and logs
    # How data reaches this version by dump-and-restore (the catalog's ``migration``), left
    # out of repr so the spec hash (and so the running containers) do not depend on them:
    # ``data_export`` runs in the old version's container, its output handed to
    # ``data_restore``, which runs in a temporary container of this version on the new volumes.
    data_export: tuple[str, ...] = field(default=(), repr=False)
    data_restore: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class EgressPolicy:
    """Where a stack's containers may open connections, as data any backend can express
    (Docker: the stack network's bridge name, which the hosts' nftables rules match,
    docs/security.md "Network egress"; Kubernetes: an egress NetworkPolicy).

    Always allowed: the stack's own containers (on any host). Never: other stacks, the
    host's own services, other hosts, link-local and metadata addresses, private ranges.
    ``internet``: any other (public) address too, the plan's switch. Inbound connections
    come only from the edge router."""

    internet: bool = False


@dataclass(frozen=True)
class StackSpec:
    """The desired state of one project environment's stack."""

    key: str  # server-generated, e.g. "env-42": prefix of every object name
    number: int  # server-generated, unique per stack (chooses its network)
    region: str
    kernel_line: str
    components: tuple[ComponentSpec, ...]
    content_release: str | None = None  # id of the content volume to mount, if any
    running: bool = True
    egress: EgressPolicy = EgressPolicy()


@dataclass(frozen=True)
class BuildJob:
    """One dependency build (stacks.runtime.builds): ``script`` (Stackport's own, fixed per
    package manager: no customer input reaches it) runs by ``/bin/sh -c`` in a container of
    ``image`` on an internal network of its own (no route out), never the stack's; its egress
    proxy joins that network and ``network``, the build network that reaches the internet.
    The release's content is unpacked at /build/app (its top folder writable by the image's
    user), /build/out is empty and writable; the artifact is the folder ``output``.
    ``files``: small extra files put at /build (the operator's CA bundle)."""

    name: str  # server-generated, [a-z0-9-]: names the container and its work volume
    image: str  # the runtime component's image, by digest
    script: str
    output: str  # an absolute folder in the container
    network: str
    env: tuple[tuple[str, str], ...] = ()
    files: tuple[tuple[str, bytes], ...] = ()
    # Where the build may connect, through its egress proxy (stacks/backends/build_proxy.py;
    # the build's own network is internal): "name:port" pairs reached by CONNECT (https), and
    # "name:port" pairs reached by plain GET (an http:// mirror). Names only, never addresses.
    tunnels: tuple[str, ...] = ()
    plain: tuple[str, ...] = ()
    # The allowed names' IPv4 addresses (name, address), resolved by the worker: the proxy
    # connects there (the build network may reach no resolver).
    addresses: tuple[tuple[str, str], ...] = ()
    # The image the proxy runs in: a catalog runtime image with python3 (by digest).
    proxy_image: str = ""
    cpus: float = 1.0
    memory_mb: int = 1024
    timeout: float = 900.0


@dataclass(frozen=True)
class EngineTLS:
    """Mutual TLS to an engine on tcp:// (the portal's CA, stacks/runtime/engine_ca.py):
    the CA the engine's certificate must chain to, and the portal's client certificate.
    ``verify``: check the engine's certificate (the host row's ``tls_verify``); the client
    certificate is presented either way."""

    ca_cert: str
    client_cert: str
    client_key: str
    verify: bool = True


@dataclass(frozen=True)
class RegistryPull:
    """Where a host pulls the catalog's images from when not from the registry they were
    pushed to (docs/install.md, "The image registry"): references under ``prefix``
    ("127.0.0.1:5000/...") are pulled as ``address/...`` (the same digest) with these
    basic-auth credentials, over TLS (the engine trusts the registry's CA)."""

    prefix: str
    address: str
    username: str = ""
    password: str = field(default="", repr=False)

    def source(self, image: str) -> str:
        """The reference to pull for ``image`` ("" when it is not under ``prefix``)."""
        if self.address and self.address != self.prefix and image.startswith(self.prefix + "/"):
            return self.address + image[len(self.prefix) :]
        return ""


@dataclass(frozen=True)
class HostRecord:
    """One engine a backend may use, from the inventory: its name, its address, its own
    address pool (routed hosts, docs/backends.md; "" for a stand-alone host), and whether
    it is draining (nothing new is placed there; what runs there is still seen and removed)."""

    name: str
    url: str
    pool: str = ""
    drain: bool = False
    tls: EngineTLS | None = None  # tcp:// engines: always mutual TLS
    registry: RegistryPull | None = None  # None: pull the catalog's references as they are


@dataclass(frozen=True)
class HostFacts:
    """What an engine says about the machine it runs on (read when a host is added)."""

    engine_id: str
    kernel_release: str
    cpus: int
    memory_mb: int


@dataclass
class ReplicaState:
    component: str
    index: int
    host: str
    status: str  # running / starting / unhealthy / exited / missing
    address: str | None = None  # ip:port the edge can reach
    version: str = ""
    spec_hash: str = ""


@dataclass
class Observed:
    replicas: list[ReplicaState] = field(default_factory=list)

    def healthy(self) -> bool:
        return bool(self.replicas) and all(r.status == "running" for r in self.replicas)


@dataclass
class ResourceSample:
    component: str
    index: int
    cpu_percent: float
    memory_bytes: int


class Backend:
    """Base class of every backend. Subclasses implement each method; all are idempotent."""

    def apply(
        self, spec: StackSpec, state: dict[str, Any], log: Any = print, drain: Drain | None = None
    ) -> dict[str, Any]:
        """Converge the engine to ``spec``; return the new opaque state. Safe to repeat.
        ``drain`` is called with the edge upstream addresses (``upstreams``) of the public
        replicas about to stop, before they stop, and of those that serve on, and returns
        once the edge sends the first nothing and their requests in flight are answered
        (when it did not route the second yet, a move's replicas on another host, it does
        so first)."""
        raise NotImplementedError

    def observe(self, spec: StackSpec, state: dict[str, Any]) -> Observed:
        """What actually runs for this stack, in one call per host."""
        raise NotImplementedError

    def destroy(self, key: str, state: dict[str, Any]) -> None:
        """Remove every object of the stack: containers, networks, volumes. Missing is fine."""
        raise NotImplementedError

    def logs(self, key: str, state: dict[str, Any], component: str, tail: int = 200) -> Iterator[str]:
        """Recent log lines of a component's replicas."""
        raise NotImplementedError

    def samples(self, key: str, state: dict[str, Any]) -> list[ResourceSample]:
        """One CPU/memory sample per replica."""
        raise NotImplementedError

    def put_content(
        self,
        key: str,
        state: dict[str, Any],
        release: str,
        archive: BinaryIO,
        image: str | None = None,
        extras: Sequence[BinaryIO] = (),
    ) -> None:
        """Store a release's content (an uncompressed tar, a seekable file: streamed, read once
        per host from its start) once, where the stack mounts it; ``image`` (one of the stack's)
        may be used to unpack it. ``extras``: more tars (built dependencies) unpacked on top."""
        raise NotImplementedError

    def build(self, job: BuildJob, archive: BinaryIO, out: BinaryIO, log: Any = print) -> int:
        """Run one dependency build on the content ``archive`` (an uncompressed tar, seekable),
        every output line to ``log`` as it comes; returns the script's exit code, and when it
        is 0 writes the tar of ``job.output`` to ``out``. A build that runs past
        ``job.timeout`` is killed (``BackendError``, permanent). The container and its work
        volume are removed in every case."""
        raise NotImplementedError

    def migrate_data(
        self, spec: StackSpec, state: dict[str, Any], old: ComponentSpec, new: ComponentSpec, log: Any = print
    ) -> None:
        """Copy a stateful component's data from ``old`` (running) into ``new``'s fresh
        volumes (``new.data_generation`` > ``old.data_generation``); the old volumes stay."""
        raise NotImplementedError

    def upstreams(self, spec: StackSpec, state: dict[str, Any]) -> list[str]:
        """The fixed ``ip:port`` slots the edge routes the public component to."""
        raise NotImplementedError

    def stacks(self) -> dict[str, list[ReplicaState]]:
        """Every stack's replicas on every host, by stack key (one call per host)."""
        raise NotImplementedError

    def prune_images(self, keep: set[str]) -> list[str]:
        """Remove catalog images no container uses and ``keep`` does not name."""
        raise NotImplementedError

    def prune_content(self, keep: dict[str, set[str]]) -> list[str]:
        """Remove, on every host, the content volumes (``put_content``) of the stacks named in
        ``keep`` whose release id that stack's set does not hold; a volume a container still
        mounts stays, and stacks not named are not touched. Returns ``host:volume`` removed."""
        raise NotImplementedError

    def volume_usage(self, spec: StackSpec, state: dict[str, Any]) -> list[VolumeUsage]:
        """Used and total bytes of every volume of the stack's components (one call per
        host); volumes not made yet are left out."""
        raise NotImplementedError

    def hosts_of(self, state: dict[str, Any]) -> list[str]:
        """The hosts the stack uses by its ``state``, its home first; [] when not placed.
        The runtime records this (``Placement``); nothing outside the backend reads ``state``."""
        raise NotImplementedError

    def rehome(self, state: dict[str, Any], host: str) -> dict[str, Any]:
        """The state to apply so the stack is made afresh with ``host`` as its home (a
        move): the next ``apply`` builds it there, and what ran elsewhere is removed."""
        raise NotImplementedError

    # Backups (stacks.runtime.backups). ``method`` names how a component's data is taken:
    # "postgresql", "mariadb" (logical dumps), "redis" (its RDB snapshot), "rabbitmq" (the
    # broker's definitions) or "files" (a tar of the file volume ``volume``).
    def dump(
        self,
        spec: StackSpec,
        state: dict[str, Any],
        component: str,
        method: str,
        volume: str = "",
        log: Any = print,
    ) -> Iterator[bytes]:
        """Stream a consistent backup of a running component, taken by a helper container of
        its own image on the stack's network; it keeps running. Raises ``BackendError`` at the
        end of the stream when the dump failed (a consumer must then keep nothing)."""
        raise NotImplementedError

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
        """Replace a component's data in place by a backup (what ``dump`` streamed). Loaded
        into fresh volumes first: a failure leaves the running data as it was. The replaced
        data is kept (volumes named by ``token``, returned) until ``drop_kept``; ``undo_restore``
        puts it back."""
        raise NotImplementedError

    def undo_restore(
        self, spec: StackSpec, state: dict[str, Any], component: str, kept: list[str], log: Any = print
    ) -> None:
        """Put back the data a restore replaced (``kept``, as ``restore`` returned it)."""
        raise NotImplementedError

    def drop_kept(self, key: str, state: dict[str, Any], kept: list[str]) -> None:
        """Remove the data a restore kept. Missing is fine."""
        raise NotImplementedError

    def remove_data(self, spec: StackSpec, state: dict[str, Any], component: str) -> None:
        """Remove ``component``'s volumes as ``spec`` names them: the data an older data
        generation ran on, kept after a stateful upgrade until the customer deletes it.
        Refused (permanent ``BackendError``) while a container of the stack uses one of them;
        missing is fine."""
        raise NotImplementedError

    def check_dump(
        self, spec: StackSpec, state: dict[str, Any], component: str, method: str, chunks: Iterable[bytes]
    ) -> None:
        """Read a dump file a customer uploaded (``chunks``) with the component's own tools,
        touching none of its data (PostgreSQL: ``pg_restore --list`` of the same version).
        ``BackendError`` (permanent, with the tool's words) when they cannot read it."""
        raise NotImplementedError


class EdgeRouting(Protocol):
    """What the portal asks of the edge router, whichever it is (``STACKPORT_EDGE_ROUTER``,
    ``stacks.runtime.edges``): Caddy's client ``stacks.backends.edge.EdgeRouter`` and
    HAProxy's ``stacks.backends.haproxy.HAProxyRouter``. Every change is idempotent (False:
    nothing to change); failures are ``EdgeError`` with a ``permanent`` flag."""

    timeout: float

    def __enter__(self) -> Self: ...
    def __exit__(self, *exc: object) -> None: ...
    def close(self) -> None: ...
    def routes(self) -> dict[str, Any]: ...
    def route_config(self, route: Route) -> Any: ...
    def route_upstreams(self, route: Any) -> list[str]: ...
    def set_route(
        self,
        route_id: str,
        hosts: list[str],
        upstreams: list[str],
        path_prefix: str | None = None,
        health_path: str = ...,
        *,
        strip_prefix: bool = False,
        page: str | None = None,
    ) -> bool: ...
    def set_routes(self, routes: Iterable[Route] = (), remove: Iterable[str] = ()) -> bool: ...
    def remove_route(self, route_id: str) -> bool: ...
    def drain(self, route_id: str, upstreams: Iterable[str]) -> bool: ...
    def wait_drained(
        self, route_id: str, upstreams: Iterable[str], timeout: float = ..., interval: float = ...
    ) -> bool: ...
    def ensure_https(self) -> bool: ...
    def set_platform_routes(
        self,
        *,
        challenges: dict[str, str] | None = None,
        hsts_hosts: Iterable[str] = (),
        redirect_hosts: Iterable[str] = (),
    ) -> bool: ...
    def served_certificate(self, host: str) -> CertificateInfo | None: ...
    def get_over_https(self, host: str, path: str = "/") -> tuple[int, str]: ...


def get_backend(path: str, **options: Any) -> Backend:
    """Instantiate the backend class at the dotted ``path``."""

    cls = import_string(path)
    backend = cls(**options)
    if not isinstance(backend, Backend):
        raise BackendError(f"{path} is not a Backend", permanent=True)
    return backend
