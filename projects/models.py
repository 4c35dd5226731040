"""Tenancy: who the customer is and who may do what in it.

Models hold state and cheap derived facts; every write goes through ``projects.services``.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models
from django.utils import timezone


class User(AbstractUser):
    """The portal's user. Signs in with an e-mail address (allauth); the username is internal."""

    class Meta:
        db_table = "projects_user"


class Role(models.TextChoices):
    VIEWER = "viewer", "Viewer"
    DEVELOPER = "developer", "Developer"
    ADMIN = "admin", "Admin"
    OWNER = "owner", "Owner"

    @property
    def rank(self) -> int:
        return ROLE_RANK[self.value]

    def at_least(self, other: str) -> bool:
        return ROLE_RANK[self.value] >= ROLE_RANK[str(other)]


ROLE_RANK: dict[str, int] = {Role.VIEWER: 0, Role.DEVELOPER: 1, Role.ADMIN: 2, Role.OWNER: 3}


class Organization(models.Model):
    """The customer account: owns projects, is billed, has members."""

    name = models.CharField(max_length=100)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    # Sales demos: made by the demo service, warned before and removed after this moment.
    is_demo = models.BooleanField(default=False)
    demo_expires_at = models.DateTimeField(null=True, blank=True)
    demo_warned_at = models.DateTimeField(null=True, blank=True)
    members: models.ManyToManyField[User, Membership] = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="organizations"
    )

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.DEVELOPER)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["organization_id", "created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "user"], name="membership_unique_user")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"

    def has_role(self, role: str) -> bool:
        return Role(self.role).at_least(role)


class InvitationQuerySet(models.QuerySet["Invitation"]):
    def pending(self) -> InvitationQuerySet:
        return self.filter(accepted_at__isnull=True, revoked_at__isnull=True, expires_at__gt=timezone.now())


class Invitation(models.Model):
    """An e-mailed invitation: single-use, expiring, bound to the invited address.

    The link carries a signature of the id (``django.core.signing``), so no token is
    stored and tasks only ever carry the id.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.DEVELOPER)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = InvitationQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["organization", "email"])]

    def __str__(self) -> str:
        return f"{self.email} → {self.organization}"

    @property
    def status(self) -> str:
        if self.accepted_at:
            return "accepted"
        if self.revoked_at:
            return "revoked"
        if self.expires_at <= timezone.now():
            return "expired"
        return "pending"


class AuditEvent(models.Model):
    """Who did what, in which organization (and later project), from where, when.

    Written only by ``projects.services.record_audit_event``; never edited.
    """

    created_at = models.DateTimeField(default=timezone.now, db_index=True, editable=False)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # A snapshot, so the trail survives the user's deletion and records failed logins.
    actor_email = models.CharField(max_length=254, blank=True)
    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events"
    )
    action = models.CharField(max_length=64, db_index=True)
    target = models.CharField(max_length=200, blank=True)
    data = models.JSONField(default=dict, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["organization", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.actor_email or '-'} {self.action}"


class Project(models.Model):
    """A customer's application, in one region. Its environments are what runs."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="projects")
    # The customer's name, shown as typed; object names on hosts never derive from it.
    name = models.CharField(max_length=100)
    region = models.ForeignKey("stacks.Region", on_delete=models.PROTECT, related_name="projects")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    # Support suspends a project: its containers stop, its data stays, customers cannot act.
    suspended_at = models.DateTimeField(null=True, blank=True)
    suspended_reason = models.CharField(max_length=300, blank=True)
    # The project's ssh deploy key (Ed25519): the only identity its git fetches over ssh use.
    # The private half is encrypted (projects.crypto); the public half is the customer's to
    # add to their git host. The host keys of the git servers, recorded on first use.
    deploy_key_public = models.CharField(max_length=200, blank=True)
    deploy_key_private = models.BinaryField(blank=True, default=b"", editable=False)
    deploy_key_created_at = models.DateTimeField(null=True, blank=True)
    ssh_known_hosts = models.TextField(blank=True, default="")
    # "Delete for good" of an archived project: it leaves the archive and every page, while its
    # rows stay (usage records, invoice lines, backups and the audit log refer to them).
    purged_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["organization_id", "name", "id"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "name"], name="project_unique_name"),
        ]

    def __str__(self) -> str:
        return self.name


class EnvironmentStatus(models.TextChoices):
    NEW = "new", "New"
    DEPLOYING = "deploying", "Deploying"
    RUNNING = "running", "Running"
    DEGRADED = "degraded", "Degraded"
    STOPPED = "stopped", "Stopped"
    FAILED = "failed", "Failed"
    DESTROYING = "destroying", "Destroying"
    DESTROYED = "destroyed", "Destroyed"


class Environment(models.Model):
    """One running copy of a project (production, staging): one stack on the backend.

    ``key`` (``env-<id>``) prefixes every object on the hosts; the id also chooses the
    stack's private network. ``backend_state`` is the backend's opaque bookkeeping.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="environments")
    name = models.SlugField(max_length=30, default="production")
    kernel = models.ForeignKey("stacks.KernelVersion", on_delete=models.PROTECT, related_name="+")
    framework = models.ForeignKey(
        "stacks.Framework", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    template = models.ForeignKey(
        "stacks.StackTemplate", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # What the customer asked for: running or stopped (destroyed environments are kept as rows).
    desired_running = models.BooleanField(default=True)
    status = models.CharField(max_length=16, choices=EnvironmentStatus.choices, default=EnvironmentStatus.NEW)
    status_detail = models.CharField(max_length=300, blank=True)
    current_release = models.ForeignKey(
        "stacks.Release", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    backend_state = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    destroyed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["project_id", "id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="environment_unique_name"),
        ]

    def __str__(self) -> str:
        return f"{self.project.name} / {self.name}"

    @property
    def key(self) -> str:
        return f"{settings.STACKPORT_STACK_PREFIX}-{self.pk}"

    @property
    def hostname(self) -> str:
        """The default host name under the hoster's apps domain."""
        return f"{self.key}.{settings.STACKPORT_APPS_DOMAIN}"

    @property
    def public_url(self) -> str:
        port = settings.STACKPORT_EDGE_PUBLIC_PORT
        return f"http://{self.hostname}" + ("" if port == 80 else f":{port}")

    @property
    def organization_id(self) -> int:
        return self.project.organization_id


class ApiToken(models.Model):
    """A personal API token: acts as its user (same roles), optionally limited to one
    organization and to reading. Only a SHA-256 of the secret is stored; the secret is
    shown once, when it is made."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)  # shown in lists, finds the row
    token_hash = models.CharField(max_length=64, unique=True)
    read_only = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)
