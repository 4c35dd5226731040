"""The Docker host inventory: register hosts, read their capacity and kernel from the
engine, and choose where replicas go."""

from __future__ import annotations

import ipaddress
import re

from django.db import transaction
from django.utils import timezone

from projects.services import ServiceError
from stacks.backends.base import BackendError
from stacks.backends.docker import describe_host
from stacks.models import DockerHost, KernelVersion, Region

URL_RE = re.compile(r"(unix:///[\w./-]+|tcp://[\w.-]+:\d{1,5}|ssh://[\w.-]+@[\w.-]+(:\d{1,5})?)")
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


def refresh_host(host: DockerHost) -> DockerHost:
    """Read the engine's id, kernel, CPUs and memory; mark the host down when it does not answer."""
    try:
        facts = describe_host(host.url)
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
