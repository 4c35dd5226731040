"""The curated catalog: regions, kernel lines, frameworks, components and their versions,
compatibility rules and pre-built stack templates.

Rows are written by ``stacks.catalog.loader.load_catalog`` (from the versioned YAML files) and by
the image pipeline services (``stacks.services``); the hoster's catalog staff adjust them in
Django admin. Models hold state and cheap derived facts only.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import date
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone


class Region(models.Model):
    code = models.SlugField(max_length=32, unique=True)
    name = models.CharField(max_length=100)
    # A key of settings.STACKPORT_BACKENDS ("docker", "kubernetes"): which backend serves it.
    backend = models.CharField(max_length=32, default="docker")
    kernel_lines: models.ManyToManyField[KernelVersion, Any] = models.ManyToManyField(
        "KernelVersion", related_name="regions", blank=True
    )
    is_active = models.BooleanField(default=True)
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["position", "code"]

    def __str__(self) -> str:
        return f"{self.name} ({self.code})"


class KernelVersion(models.Model):
    """A kernel line the hoster offers (e.g. 6.1 LTS); host pools declare which they run."""

    line = models.CharField(max_length=16, unique=True)
    name = models.CharField(max_length=100)
    eol = models.DateField(null=True, blank=True)
    is_default = models.BooleanField(default=False)

    class Meta:
        ordering = ["line"]

    def __str__(self) -> str:
        return self.name


class ComponentKind(models.TextChoices):
    WEB = "web", "Web server"
    RUNTIME = "runtime", "Application runtime"
    SQL = "sql", "SQL database"
    NOSQL = "nosql", "NoSQL database"
    CACHE = "cache", "Cache"
    QUEUE = "queue", "Queue"


class Size(models.Model):
    """A resource size a component can run at (limits applied to each replica)."""

    code = models.SlugField(max_length=16, unique=True)
    name = models.CharField(max_length=50)
    cpus = models.DecimalField(max_digits=5, decimal_places=2)
    memory_mb = models.PositiveIntegerField()
    pids = models.PositiveIntegerField(default=256)
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["position", "memory_mb"]

    def __str__(self) -> str:
        return f"{self.name} ({self.cpus} CPU, {self.memory_mb} MB)"


class Component(models.Model):
    """A curated building block and the contract the lifecycle relies on."""

    code = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=ComponentKind.choices)
    description = models.TextField(blank=True)
    recipe = models.CharField(max_length=60, help_text="Folder under stacks/catalog/images/")
    user = models.CharField(max_length=40, help_text="User the container runs as")
    read_only_root = models.BooleanField(default=True)
    tmpfs = models.JSONField(default=list, blank=True)
    capabilities = models.JSONField(default=list, blank=True, help_text="Added back after dropping ALL")
    stateful = models.BooleanField(default=False)
    ports = models.JSONField(default=list, blank=True)
    volumes = models.JSONField(default=list, blank=True)
    env = models.JSONField(default=dict, blank=True)
    provides = models.JSONField(default=dict, blank=True)
    health = models.JSONField(default=dict, blank=True)
    verify = models.JSONField(default=dict, blank=True)
    sizes = models.ManyToManyField(Size, related_name="components", blank=True)
    default_size = models.ForeignKey(Size, on_delete=models.PROTECT, related_name="+")
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["position", "kind", "code"]

    def __str__(self) -> str:
        return self.name


class Framework(models.Model):
    """A language runtime customers choose (PHP, Python, Node.js, static site)."""

    code = models.SlugField(max_length=32, unique=True)
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    # The runtime component that implements it; none for static sites.
    runtime = models.ForeignKey(
        Component, null=True, blank=True, on_delete=models.PROTECT, related_name="frameworks"
    )
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["position", "code"]

    def __str__(self) -> str:
        return self.name


class VersionStatus(models.TextChoices):
    CANDIDATE = "candidate", "Candidate"
    VERIFIED = "verified", "Verified"
    CURRENT = "current", "Current"
    DEPRECATED = "deprecated", "Deprecated"
    END_OF_LIFE = "eol", "End of life"


# Which status may follow which (services refuse anything else).
VERSION_TRANSITIONS: dict[str, set[str]] = {
    VersionStatus.CANDIDATE: {VersionStatus.VERIFIED},
    VersionStatus.VERIFIED: {VersionStatus.CURRENT, VersionStatus.DEPRECATED, VersionStatus.CANDIDATE},
    VersionStatus.CURRENT: {VersionStatus.DEPRECATED, VersionStatus.END_OF_LIFE, VersionStatus.CANDIDATE},
    VersionStatus.DEPRECATED: {VersionStatus.CURRENT, VersionStatus.END_OF_LIFE, VersionStatus.CANDIDATE},
    VersionStatus.END_OF_LIFE: set(),
}
OFFERED_STATUSES = (VersionStatus.CURRENT,)
RUNNABLE_STATUSES = (VersionStatus.VERIFIED, VersionStatus.CURRENT, VersionStatus.DEPRECATED)


class ComponentVersion(models.Model):
    component = models.ForeignKey(Component, on_delete=models.CASCADE, related_name="versions")
    version = models.CharField(max_length=32)
    track = models.CharField(max_length=32)
    debian = models.CharField(max_length=16, help_text="Debian release of the base image")
    build_args = models.JSONField(default=dict, blank=True)
    # What the hoster wants once the image is verified (from the catalog file).
    target_status = models.CharField(
        max_length=16, choices=VersionStatus.choices, default=VersionStatus.CURRENT
    )
    status = models.CharField(max_length=16, choices=VersionStatus.choices, default=VersionStatus.CANDIDATE)
    released = models.DateField(null=True, blank=True)
    deprecated_on = models.DateField(null=True, blank=True)
    eol = models.DateField(null=True, blank=True)
    migration = models.JSONField(default=dict, blank=True)
    position = models.PositiveIntegerField(default=0)
    # Filled by the image pipeline.
    recipe_hash = models.CharField(max_length=64, blank=True)
    image_ref = models.CharField(max_length=255, blank=True)
    digest = models.CharField(max_length=80, blank=True)
    built_at = models.DateTimeField(null=True, blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)
    published_at = models.DateTimeField(null=True, blank=True)
    failure_reason = models.TextField(blank=True)
    verification_log = models.TextField(blank=True)

    class Meta:
        ordering = ["component__position", "component__code", "position", "version"]
        constraints = [
            models.UniqueConstraint(fields=["component", "version"], name="componentversion_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.component.name} {self.version}"

    @property
    def is_end_of_life(self) -> bool:
        return self.status == VersionStatus.END_OF_LIFE or bool(
            self.eol and self.eol <= timezone.now().date()
        )

    @property
    def eol_soon(self) -> bool:
        return bool(self.eol and not self.is_end_of_life and (self.eol - date.today()).days <= 180)

    @property
    def pinned_reference(self) -> str:
        """The image as customers run it: by digest once published."""
        if self.image_ref and self.digest:
            return f"{self.image_ref.rsplit(':', 1)[0]}@{self.digest}"
        return self.image_ref


class CompatibilityRule(models.Model):
    """How components go together: ``requires`` one of, or ``works_with`` (allowed pairing)."""

    class Kind(models.TextChoices):
        REQUIRES = "requires", "requires one of"
        WORKS_WITH = "works_with", "works with"

    component = models.ForeignKey(Component, on_delete=models.CASCADE, related_name="rules")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    others = models.ManyToManyField(Component, related_name="+")
    note = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["component__code", "kind", "id"]
        constraints = [
            models.UniqueConstraint(fields=["component", "kind"], name="compatibility_unique_kind"),
        ]

    def __str__(self) -> str:
        return f"{self.component.code} {self.kind}"


class StackTemplate(models.Model):
    """A pre-built stack: components, sizes and a sample application."""

    code = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    framework = models.ForeignKey(Framework, null=True, blank=True, on_delete=models.PROTECT)
    sample_app = models.CharField(max_length=60, blank=True, help_text="Folder under stacks/catalog/samples/")
    is_active = models.BooleanField(default=True)
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["position", "code"]

    def __str__(self) -> str:
        return self.name


class StackTemplateComponent(models.Model):
    template = models.ForeignKey(StackTemplate, on_delete=models.CASCADE, related_name="components")
    # The service name other components reach it by (e.g. "db", "web").
    name = models.SlugField(max_length=30)
    component = models.ForeignKey(Component, on_delete=models.PROTECT, related_name="+")
    track = models.CharField(max_length=32, blank=True, help_text="Empty: the current version")
    size = models.ForeignKey(Size, on_delete=models.PROTECT, related_name="+")
    replicas = models.PositiveSmallIntegerField(default=1)
    env = models.JSONField(default=dict, blank=True)
    public = models.BooleanField(default=False, help_text="Receives the edge route")
    # Stack volumes it mounts, shared with the template's other components that name them:
    # [{"volume": "uploads", "path": "/srv/app/wp-content/uploads"}] (docs/catalog.md).
    mounts = models.JSONField(default=list, blank=True)
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["template", "position"]
        constraints = [
            models.UniqueConstraint(fields=["template", "name"], name="templatecomponent_unique_name"),
        ]

    def __str__(self) -> str:
        return f"{self.template.code}/{self.name}"


# --- hosts and running stacks -------------------------------------------------------------------
class DockerHost(models.Model):
    """A Docker engine the hoster runs customer stacks on (inventory, filled in admin or by
    ``manage.py add_host``); capacity and kernel are read from the engine."""

    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPECT = "suspect", "Suspect (missed a health probe)"
        DRAINING = "draining", "Draining (no new replicas)"
        DOWN = "down", "Down"

    name = models.SlugField(max_length=40, unique=True)
    url = models.CharField(max_length=255, help_text="unix:///path, tcp://host:2376 (TLS) or ssh://user@host")
    region = models.ForeignKey(Region, on_delete=models.PROTECT, related_name="hosts")
    kernel = models.ForeignKey(
        KernelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="hosts"
    )
    state = models.CharField(max_length=16, choices=State.choices, default=State.ACTIVE)
    labels = models.JSONField(default=dict, blank=True)
    tls_verify = models.BooleanField(default=True)
    address_pool = models.CharField(
        max_length=18,
        blank=True,
        help_text="Routed hosts (docs/backends.md): the host's own /16 for stack networks, e.g. "
        "10.225.0.0/16. Empty: a stand-alone host (stacks live on one host).",
    )
    # Read from the engine by stacks.runtime.hosts.refresh_host.
    engine_id = models.CharField(max_length=100, blank=True)
    kernel_release = models.CharField(max_length=100, blank=True)
    cpus = models.PositiveIntegerField(default=0)
    memory_mb = models.PositiveIntegerField(default=0)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True)
    # Health probes (stacks.runtime.hosts): consecutive misses move active -> suspect -> down.
    probed_at = models.DateTimeField(null=True, blank=True)
    missed_probes = models.PositiveSmallIntegerField(default=0)
    down_since = models.DateTimeField(null=True, blank=True)
    # The engine answered with another ID than the one stored at first contact: a new, empty
    # engine under the old name (stacks.runtime.reconcile.engine_reinstalled).
    reinstalled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["region__code", "name"]

    def __str__(self) -> str:
        return self.name


class Placement(models.Model):
    """Where an environment's stack lives: its home host (data and single replicas) and
    every host its replicas use, home first. Written by the runtime after each apply from
    what the backend reports (``Backend.hosts_of``), read by pages, placement and support;
    the backend's own bookkeeping (``Environment.backend_state``) stays opaque to them."""

    environment = models.OneToOneField(
        "projects.Environment", on_delete=models.CASCADE, related_name="placement"
    )
    host = models.ForeignKey(
        DockerHost, null=True, blank=True, on_delete=models.SET_NULL, related_name="homed"
    )
    hosts = models.JSONField(default=list, blank=True)  # host names, home first
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return ", ".join(self.hosts) or "not placed"


def placed_hosts(environment: Any) -> list[str]:
    """The hosts an environment's stack uses, home first; [] when it was never placed."""
    try:
        return list(environment.placement.hosts)
    except Placement.DoesNotExist:
        return []


def home_host(environment: Any) -> str:
    """The environment's home host name, "" when it was never placed."""
    hosts = placed_hosts(environment)
    return hosts[0] if hosts else ""


class StackComponent(models.Model):
    """One component of an environment's stack as the customer wants it now."""

    environment = models.ForeignKey(
        "projects.Environment", on_delete=models.CASCADE, related_name="components"
    )
    name = models.SlugField(max_length=30)  # the service name others reach it by
    component = models.ForeignKey(Component, on_delete=models.PROTECT, related_name="+")
    version = models.ForeignKey(ComponentVersion, on_delete=models.PROTECT, related_name="+")
    size = models.ForeignKey(Size, on_delete=models.PROTECT, related_name="+")
    replicas = models.PositiveSmallIntegerField(default=1)
    public = models.BooleanField(default=False)
    env = models.JSONField(default=dict, blank=True)  # fixed settings from the template
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["environment_id", "position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["environment", "name"], name="stackcomponent_unique_name"),
        ]

    def __str__(self) -> str:
        return f"{self.environment_id}/{self.name}"


class Variable(models.Model):
    """An environment variable of an environment; secrets are stored encrypted (Fernet)
    and never shown again. Generated credentials (database passwords) are secrets too."""

    environment = models.ForeignKey(
        "projects.Environment", on_delete=models.CASCADE, related_name="variables"
    )
    # Empty: given to every application component; else only to that component.
    component = models.CharField(max_length=30, blank=True)
    name = models.CharField(max_length=100)
    value = models.TextField(blank=True)  # plain variables only
    encrypted_value = models.BinaryField(blank=True, default=b"")
    is_secret = models.BooleanField(default=False)
    generated = models.BooleanField(default=False)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["environment_id", "component", "name"]
        constraints = [
            models.UniqueConstraint(fields=["environment", "component", "name"], name="variable_unique_name"),
        ]

    def __str__(self) -> str:
        return self.name


class Release(models.Model):
    """A numbered, immutable snapshot of what an environment runs: the components with their
    versions, sizes and replicas, and the content. Rollback re-applies an earlier one."""

    class Source(models.TextChoices):
        TEMPLATE = "template", "Template sample"
        UPLOAD = "upload", "Uploaded archive"
        GIT = "git", "Git repository"
        NONE = "none", "No content"

    environment = models.ForeignKey("projects.Environment", on_delete=models.CASCADE, related_name="releases")
    number = models.PositiveIntegerField()
    spec = models.JSONField(default=dict)  # {"components": [...]} as StackComponent rows
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.NONE)
    source_detail = models.CharField(max_length=300, blank=True)  # file name, repo + branch
    content_sha256 = models.CharField(max_length=64, blank=True)
    content_files = models.PositiveIntegerField(default=0)
    content_bytes = models.PositiveBigIntegerField(default=0)
    commit = models.CharField(max_length=64, blank=True)
    # The dependencies built for the content (stacks.runtime.builds): the cache key of the
    # build artifact placed into the content volume with the content; "": none built.
    build_key = models.CharField(max_length=64, blank=True)
    note = models.CharField(max_length=200, blank=True)
    # Set when the release first ran to the end of its operation: only such releases are
    # rollback targets. ``images``: component name -> the image (by digest) it ran, so a
    # rollback or repair runs the same bytes whatever the catalog says of the version today.
    ran_at = models.DateTimeField(null=True, blank=True)
    images = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["environment_id", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["environment", "number"], name="release_unique_number"),
        ]

    def __str__(self) -> str:
        return f"release {self.number}"

    @property
    def content_id(self) -> str:
        """Names the content volume: the same content (with the same built dependencies) is
        stored once per environment."""
        if self.build_key and self.content_sha256:
            return hashlib.sha256(f"{self.content_sha256}+{self.build_key}".encode()).hexdigest()[:24]
        return self.content_sha256[:24]


class OperationKind(models.TextChoices):
    DEPLOY = "deploy", "Deploy"
    SCALE = "scale", "Scale"
    UPGRADE = "upgrade", "Upgrade"
    ROLLBACK = "rollback", "Rollback"
    STOP = "stop", "Stop"
    START = "start", "Start"
    DESTROY = "destroy", "Destroy"
    RESTORE = "restore", "Restore from a backup"


class OperationStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


ACTIVE_OPERATION_STATUSES = (OperationStatus.QUEUED, OperationStatus.RUNNING)


class Operation(models.Model):
    """One change to an environment, run by a Celery task; steps and log lines for the UI.
    At most one queued or running operation per environment (a database constraint)."""

    environment = models.ForeignKey(
        "projects.Environment", on_delete=models.CASCADE, related_name="operations"
    )
    kind = models.CharField(max_length=16, choices=OperationKind.choices)
    status = models.CharField(max_length=16, choices=OperationStatus.choices, default=OperationStatus.QUEUED)
    release = models.ForeignKey(Release, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    previous_release = models.ForeignKey(
        Release, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    params = models.JSONField(default=dict, blank=True)
    steps = models.JSONField(default=list, blank=True)  # [{"name", "status", "started", "finished"}]
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["environment"],
                condition=models.Q(status__in=["queued", "running"]),
                name="operation_one_active_per_environment",
            ),
        ]
        indexes = [
            # An environment's latest operation (dashboard, environment page) and the
            # dashboard's organization-wide count of environments whose last one failed.
            models.Index(fields=["environment", "-created_at", "-id"], name="operation_env_latest"),
            models.Index(
                fields=["environment"], condition=models.Q(status="failed"), name="operation_failed"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_OPERATION_STATUSES

    @property
    def progress(self) -> int:
        """Percent of steps finished (for the progress bar)."""
        if not self.steps:
            return 100 if not self.is_active else 0
        done = sum(1 for s in self.steps if s.get("status") in ("done", "skipped"))
        return int(100 * done / len(self.steps))


def new_claim_token() -> str:
    return secrets.token_hex(16)


class DomainClaim(models.Model):
    """An organization's claim on a host name, proven by a DNS TXT record holding ``token``
    (docs/domains.md). One claim serves every path prefix of that host in the organization;
    several organizations may wait on the same name, but only one can hold it verified."""

    class Method(models.TextChoices):
        DNS = "dns", "DNS TXT record"
        SUPPORT = "support", "Marked verified by support"
        EXISTING = "existing", "Routed before verification existed"
        TRUSTED = "trusted", "Verification off (single-tenant install)"
        HTTP = "http", "HTTP token served by the edge"

    organization = models.ForeignKey(
        "projects.Organization", on_delete=models.CASCADE, related_name="domain_claims"
    )
    hostname = models.CharField(max_length=253)
    token = models.CharField(max_length=64, default=new_claim_token, editable=False)
    verified_at = models.DateTimeField(null=True, blank=True)
    method = models.CharField(max_length=10, choices=Method.choices, blank=True)
    last_checked_at = models.DateTimeField(null=True, blank=True)
    check_error = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["hostname"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "hostname"], name="domainclaim_unique_per_org"),
            models.UniqueConstraint(
                fields=["hostname"],
                condition=models.Q(verified_at__isnull=False),
                name="domainclaim_one_verified_owner",
            ),
        ]
        indexes = [models.Index(fields=["verified_at", "last_checked_at"], name="domainclaim_pending")]

    def __str__(self) -> str:
        return f"{self.hostname} ({'verified' if self.verified_at else 'pending'})"

    @property
    def is_verified(self) -> bool:
        return self.verified_at is not None

    @property
    def record_name(self) -> str:
        """The TXT record to create: its name (its value is ``token``)."""
        return f"_stackport-challenge.{self.hostname}"


class VerifiedName(models.Model):
    """A name an organization held verified, kept when its claim is released: the HTTP proof
    is refused to other organizations on it and on the names under it (docs/domains.md)."""

    hostname = models.CharField(max_length=253)
    organization = models.ForeignKey(
        "projects.Organization", on_delete=models.SET_NULL, null=True, related_name="+"
    )
    first_verified_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["hostname", "organization"], name="verifiedname_unique_per_org"),
        ]

    def __str__(self) -> str:
        return self.hostname


class Domain(models.Model):
    """A customer's own host name (and optional path prefix) routed to an environment once
    its organization's claim on the host name is verified."""

    environment = models.ForeignKey("projects.Environment", on_delete=models.CASCADE, related_name="domains")
    claim = models.ForeignKey(DomainClaim, on_delete=models.CASCADE, related_name="domains")
    hostname = models.CharField(max_length=253)
    path_prefix = models.CharField(max_length=256, blank=True)
    strip_prefix = models.BooleanField(
        default=False,
        help_text="Remove the path prefix before the request reaches the app (/shop/cart arrives as /cart)",
    )
    component = models.CharField(max_length=30, blank=True, help_text="Empty: the public component")
    hsts = models.BooleanField(
        default=False,
        help_text="Send Strict-Transport-Security over HTTPS: browsers then refuse plain HTTP for a year",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["hostname", "path_prefix"]
        constraints = [
            models.UniqueConstraint(fields=["claim", "path_prefix"], name="domain_unique_claim_route"),
        ]

    def __str__(self) -> str:
        return f"{self.hostname}{self.path_prefix}"


class EdgeCertificate(models.Model):
    """What the edge serves over HTTPS for one routed host name (a customer's verified domain or
    an environment's name under the apps domain), as last probed by
    ``stacks.runtime.certificates``. Caddy obtains and renews the certificate itself; for
    HAProxy the portal orders it (``ordered_at``: its last order, kept to space retries)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Being issued"
        ACTIVE = "active", "Active"
        FAILED = "failed", "Not issued"

    hostname = models.CharField(max_length=253, unique=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    issuer = models.CharField(max_length=200, blank=True)
    not_after = models.DateTimeField(null=True, blank=True)
    error = models.CharField(max_length=300, blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)
    ordered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["hostname"]

    def __str__(self) -> str:
        return f"{self.hostname} ({self.status})"


class ResourceSampleRow(models.Model):
    """CPU and memory of one replica at one moment, recorded by the worker for charts."""

    environment = models.ForeignKey("projects.Environment", on_delete=models.CASCADE, related_name="samples")
    component = models.CharField(max_length=30)
    replica = models.PositiveSmallIntegerField(default=0)
    taken_at = models.DateTimeField(default=timezone.now, db_index=True)
    cpu_percent = models.FloatField()
    memory_bytes = models.PositiveBigIntegerField()

    class Meta:
        ordering = ["-taken_at"]
        indexes = [models.Index(fields=["environment", "component", "-taken_at"])]

    def __str__(self) -> str:
        return f"{self.component}-{self.replica} at {self.taken_at:%H:%M:%S}"


# --- backups --------------------------------------------------------------------------------------
class BackupKey(models.Model):
    """An organization's backup repository password (restic encrypts every backup with it):
    made once, stored encrypted (``projects.crypto``), never shown."""

    organization = models.OneToOneField(
        "projects.Organization", on_delete=models.CASCADE, related_name="backup_key"
    )
    encrypted_password = models.BinaryField()
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    def __str__(self) -> str:
        return f"backup key of organization {self.organization_id}"


class Backup(models.Model):
    """One backup of one component's data (a restic snapshot in the organization's
    repository), made by ``stacks.runtime.backups``. The backups of one run share a batch."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    class Trigger(models.TextChoices):
        MANUAL = "manual", "Manual"
        SCHEDULED = "scheduled", "Scheduled"
        UPLOAD = "upload", "Uploaded"  # a dump file the customer uploaded to restore

    environment = models.ForeignKey("projects.Environment", on_delete=models.CASCADE, related_name="backups")
    batch = models.CharField(max_length=32, db_index=True)
    component = models.CharField(max_length=30)
    # How the data was taken: postgresql, mariadb (dumps), redis (RDB), rabbitmq
    # (definitions), files (a tar of ``volume``).
    kind = models.CharField(max_length=16)
    volume = models.CharField(max_length=40, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.MANUAL)
    snapshot_id = models.CharField(max_length=64, blank=True)
    size_bytes = models.PositiveBigIntegerField(default=0)
    added_bytes = models.PositiveBigIntegerField(default=0)  # new data the repository stored
    duration_seconds = models.FloatField(default=0)
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["environment", "-created_at"], name="backup_env_latest")]

    def __str__(self) -> str:
        return f"backup {self.pk} of {self.component} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in (self.Status.QUEUED, self.Status.RUNNING)

    @property
    def downloadable(self) -> bool:
        """A standard dump file the customer can load with their own tools."""
        return self.status == self.Status.SUCCEEDED and self.kind in ("postgresql", "mariadb")
