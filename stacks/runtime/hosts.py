"""The Docker host inventory: register hosts, read their capacity and kernel from the
engine, and choose where replicas go."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import structlog
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from projects.services import ServiceError
from stacks.backends.base import BackendError, EngineTLS, HostFacts, HostRecord, RegistryPull
from stacks.backends.docker import ENGINE_URL_RE, describe_host
from stacks.models import DockerHost, KernelVersion, Region
from stacks.runtime import reconcile
from stacks.runtime.engine_ca import client_tls

log = structlog.get_logger(__name__)

URL_RE = ENGINE_URL_RE  # the backend refuses any other address too
NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,39}")
ROUTED_SUPERNET = ipaddress.IPv4Network("10.224.0.0/11")  # scripts/docker-hosts.sh


def kernel_line_of(release: str) -> KernelVersion | None:
    """The offered kernel line a running kernel belongs to ("6.1.0-28-amd64" is 6.1, not 6.12)."""
    for kernel in KernelVersion.objects.order_by("-line"):
        if (
            release == kernel.line
            or release.startswith(kernel.line + ".")
            or release.startswith(kernel.line + "-")
        ):
            return kernel
    return None


def engine_tls(host: DockerHost) -> EngineTLS | None:
    """tcp:// engines are reached with mutual TLS: the portal's client certificate from its
    CA (``STACKPORT_ENGINE_CA_DIR``, made on first use), the engine's certificate checked
    against it unless the row's ``tls_verify`` is off."""
    if not host.url.startswith("tcp://"):
        return None
    return client_tls(Path(settings.STACKPORT_ENGINE_CA_DIR), verify=host.tls_verify)


def registry_pull() -> RegistryPull | None:
    """Where hosts pull the catalog's images from (``STACKPORT_REGISTRY_PULL_URL``, with
    credentials); None: the references as they are."""
    address = str(settings.STACKPORT_REGISTRY_PULL_URL).removeprefix("https://").rstrip("/")
    if not address:
        return None
    return RegistryPull(
        prefix=str(settings.STACKPORT_REGISTRY),
        address=address,
        username=str(settings.STACKPORT_REGISTRY_USERNAME),
        password=str(settings.STACKPORT_REGISTRY_PASSWORD),
    )


def host_record(host: DockerHost, *, drain: bool = False) -> HostRecord:
    """The host as a backend takes it."""
    return HostRecord(
        host.name, host.url, host.address_pool, drain=drain, tls=engine_tls(host), registry=registry_pull()
    )


def refresh_host(host: DockerHost) -> DockerHost:
    """Read the engine's id, kernel, CPUs and memory; mark the host down when it does not answer."""
    try:
        facts = describe_host(host.url, tls=engine_tls(host))
    except BackendError as exc:
        DockerHost.objects.filter(pk=host.pk).update(last_error=exc.message[:300])
        host.last_error = exc.message[:300]
        return host
    host.engine_id, host.kernel_release = facts.engine_id, facts.kernel_release
    host.cpus, host.memory_mb = facts.cpus, facts.memory_mb
    host.last_seen_at = timezone.now()
    host.last_error = ""
    if host.kernel is None:
        host.kernel = kernel_line_of(host.kernel_release)
    host.save()
    return host


@transaction.atomic
def register_host(
    *, name: str, url: str, region: str, kernel_line: str | None = None, address_pool: str = ""
) -> DockerHost:
    """Add (or update) a host. Without ``kernel_line`` the line is read from the engine's
    kernel; the hoster labels hosts whose kernel is not an offered line."""
    if not NAME_RE.fullmatch(name):
        raise ServiceError("Host names are lower-case letters, digits and dashes.", field="name")
    if not URL_RE.fullmatch(url):
        raise ServiceError(
            "Give the engine as unix:///path, tcp://host:port or ssh://user@host.", field="url"
        )
    region_obj = Region.objects.filter(code=region).first()
    if region_obj is None:
        raise ServiceError(f"Unknown region {region!r}.", field="region")
    kernel = None
    if kernel_line:
        kernel = region_obj.kernel_lines.filter(line=kernel_line).first()
        if kernel is None:
            raise ServiceError(f"{region_obj.name} does not offer kernel line {kernel_line}.", field="kernel")
    if address_pool:
        try:
            pool = ipaddress.IPv4Network(address_pool)
        except ValueError:
            pool = None
        if pool is None or pool.prefixlen != 16 or not pool.subnet_of(ROUTED_SUPERNET):
            raise ServiceError(
                f"The address pool must be a /16 inside {ROUTED_SUPERNET}.", field="address_pool"
            )
    host, _ = DockerHost.objects.update_or_create(
        name=name, defaults={"url": url, "region": region_obj, "kernel": kernel, "address_pool": address_pool}
    )
    return refresh_host(host)


def ensure_local_hosts(url: str) -> list[DockerHost]:
    """Development and demos: the local engine serves every active Docker region, once per
    offered kernel line (the line is a label here; the machine runs one kernel)."""
    hosts = []
    for region in Region.objects.filter(is_active=True, backend="docker"):
        for kernel in region.kernel_lines.all():
            name = f"local-{region.code}-{kernel.line.replace('.', '-')}"
            hosts.append(register_host(name=name, url=url, region=region.code, kernel_line=kernel.line))
    return hosts


# --- host health ---------------------------------------------------------------------------------
def prober(host: DockerHost) -> Callable[..., HostFacts]:
    """How the host's backend kind describes an engine: the backend class's own
    ``describe_host`` (the in-memory backend has one), else the Docker engine's."""
    path = settings.STACKPORT_BACKENDS.get(host.region.backend, "")
    describe = getattr(import_string(path), "describe_host", None) if path else None
    return describe or describe_host


def probe_engine(host: DockerHost) -> HostFacts | BackendError:
    """One probe: the engine's ping and info, within STACKPORT_HOST_PROBE_TIMEOUT each."""
    try:
        return prober(host)(host.url, timeout=settings.STACKPORT_HOST_PROBE_TIMEOUT, tls=engine_tls(host))
    except BackendError as exc:
        return exc


def probe_hosts() -> dict[str, str]:
    """Probe every host that is not draining (one probe per engine, all at once) and move
    each through its states; returns each host's state afterwards."""
    hosts = list(DockerHost.objects.exclude(state=DockerHost.State.DRAINING).select_related("region"))
    by_url = {h.url: h for h in hosts}
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(by_url)))) as pool:
        outcomes = dict(zip(by_url, pool.map(probe_engine, by_url.values()), strict=True))
    return {h.name: record_probe(h, outcomes[h.url]) for h in sorted(hosts, key=lambda h: h.name)}


def record_probe(host: DockerHost, outcome: HostFacts | BackendError) -> str:
    """The state machine. A miss: active -> suspect, then down after
    STACKPORT_HOST_DOWN_AFTER_MISSES misses in a row (its stacks are moved or marked
    waiting at once). An answer: suspect -> active; a host that was down becomes active
    only once the stale copies on it are removed (stacks moved away while it was down),
    so nothing is served twice. Every answer refreshes CPUs and memory (placement reads
    them). An answer with another engine ID than the stored one is a reinstalled engine:
    a new, empty host under the old name (``engine_reinstalled``). Returns the new state."""

    now = timezone.now()
    reinstalled, previous = False, ""
    with transaction.atomic():
        host = DockerHost.objects.select_for_update().select_related("region").get(pk=host.pk)
        before = host.state
        host.probed_at = now
        if isinstance(outcome, BackendError):
            host.missed_probes = min(host.missed_probes + 1, 1000)
            host.last_error = outcome.message[:300]
            if host.state == DockerHost.State.ACTIVE:
                host.state = DockerHost.State.SUSPECT
            if (
                host.state == DockerHost.State.SUSPECT
                and host.missed_probes >= settings.STACKPORT_HOST_DOWN_AFTER_MISSES
            ):
                host.state, host.down_since = DockerHost.State.DOWN, now
        else:
            # Another engine ID than at first contact: the engine was reinstalled (same name,
            # nothing of what it held). Handled below, once this is saved.
            reinstalled = bool(host.engine_id and outcome.engine_id and outcome.engine_id != host.engine_id)
            if reinstalled:
                previous = host.engine_id
                host.reinstalled_at = now
            host.engine_id, host.kernel_release = (
                outcome.engine_id or host.engine_id,
                (outcome.kernel_release or host.kernel_release),
            )
            host.cpus, host.memory_mb = outcome.cpus, outcome.memory_mb
            host.last_seen_at, host.missed_probes, host.last_error = now, 0, ""
            if host.state == DockerHost.State.SUSPECT:
                host.state = DockerHost.State.ACTIVE
            elif host.state == DockerHost.State.DOWN:
                try:
                    problems = reconcile.remove_stale_copies(host)
                except BackendError as exc:
                    problems = [exc.message]
                if problems:
                    host.last_error = ("Answers again; stale copies not removed yet: " + "; ".join(problems))[
                        :300
                    ]
                else:
                    host.state, host.down_since = DockerHost.State.ACTIVE, None
        host.save(
            update_fields=[
                "state",
                "probed_at",
                "missed_probes",
                "down_since",
                "last_error",
                "last_seen_at",
                "engine_id",
                "kernel_release",
                "cpus",
                "memory_mb",
                "reinstalled_at",
            ]
        )
    if reinstalled:
        log.warning("host_engine_reinstalled", host=host.name, was=previous, now=host.engine_id)
        reconcile.engine_reinstalled(host)
    if host.state != before:
        log.warning("host_state", host=host.name, was=before, now=host.state, error=host.last_error)
    if host.state == DockerHost.State.DOWN and before != DockerHost.State.DOWN:
        reconcile.evacuate_host(host)
    return str(host.state)
