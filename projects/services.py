"""Every write to tenancy data: one function each, one transaction, one audit row.

Views, tasks, admin actions, the API and commands call these; none of them writes a
membership, an invitation or an audit row itself. Failures raise ``ServiceError`` with a
message fit to show the customer; nothing is written when one is raised.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from allauth.account.models import EmailAddress
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.utils import timezone

from projects import tasks
from projects.crypto import decrypt, encrypt, generate_ssh_key
from projects.models import (
    ApiToken,
    AuditEvent,
    EnvironmentStatus,
    Invitation,
    Membership,
    Organization,
    Project,
    Role,
)
from projects.signals import organization_created

if TYPE_CHECKING:
    from projects.models import User

INVITATION_SALT = "stackport.invitation"


class ServiceError(Exception):
    """A refused change. ``message`` is shown to the user; ``status`` is the HTTP status."""

    def __init__(self, message: str, *, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status


@dataclass(frozen=True)
class Origin:
    """Where a request came from, for the audit log."""

    ip: str | None = None
    user_agent: str = ""

    @classmethod
    def from_request(cls, request: HttpRequest | None) -> Origin:
        if request is None:
            return cls()
        return cls(ip=client_ip(request), user_agent=request.META.get("HTTP_USER_AGENT", "")[:300])


def client_ip(request: HttpRequest) -> str | None:
    """The client's address, trusting exactly ``TRUSTED_PROXY_COUNT`` proxies in front."""
    proxies = settings.TRUSTED_PROXY_COUNT
    if proxies > 0:
        forwarded = [a.strip() for a in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
        forwarded = [a for a in forwarded if a]
        if len(forwarded) >= proxies:
            return forwarded[-proxies]
    return request.META.get("REMOTE_ADDR") or None


# --- audit -------------------------------------------------------------------------------------
def record_audit_event(
    *,
    action: str,
    actor: User | None = None,
    actor_email: str = "",
    organization: Organization | None = None,
    target: str = "",
    data: dict[str, Any] | None = None,
    origin: Origin | None = None,
) -> AuditEvent:
    origin = origin or Origin()
    return AuditEvent.objects.create(
        action=action,
        actor=actor,
        actor_email=actor_email or (actor.email if actor else ""),
        organization=organization,
        target=target[:200],
        data=data or {},
        ip_address=origin.ip,
        user_agent=origin.user_agent,
    )


# --- organizations -----------------------------------------------------------------------------
def _clean_name(name: str) -> str:
    name = " ".join((name or "").split())
    if not name:
        raise ServiceError("Give the organization a name.", field="name")
    if len(name) > 100:
        raise ServiceError("Keep the name to 100 characters or fewer.", field="name")
    return name


@transaction.atomic
def create_organization(*, name: str, owner: User, origin: Origin | None = None) -> Organization:
    org = Organization.objects.create(name=_clean_name(name))
    Membership.objects.create(organization=org, user=owner, role=Role.OWNER)
    organization_created.send(sender=Organization, organization=org, origin=origin)
    record_audit_event(
        action="organization.created", actor=owner, organization=org, target=org.name, origin=origin
    )
    return org


def create_personal_organization(*, user: User, origin: Origin | None = None) -> Organization:
    """Every new user gets an organization of their own, named after them."""
    local = (user.email or user.get_username()).split("@")[0]
    return create_organization(name=f"{local}'s organization", owner=user, origin=origin)


def _membership_of(user: User, organization: Organization) -> Membership:
    membership = Membership.objects.filter(organization=organization, user=user).first()
    if membership is None:
        raise ServiceError("You are not a member of this organization.", status=404)
    return membership


def require_role(user: User, organization: Organization, role: str) -> Membership:
    membership = _membership_of(user, organization)
    if not membership.has_role(role):
        raise ServiceError(
            f"This needs the {Role(role).label.lower()} role or higher; you are "
            f"{Role(membership.role).label.lower()}.",
            status=403,
        )
    return membership


@transaction.atomic
def rename_organization(
    *, organization: Organization, name: str, actor: User, origin: Origin | None = None
) -> Organization:
    require_role(actor, organization, Role.ADMIN)
    old = organization.name
    organization.name = _clean_name(name)
    organization.save(update_fields=["name"])
    record_audit_event(
        action="organization.renamed",
        actor=actor,
        organization=organization,
        target=organization.name,
        data={"from": old},
        origin=origin,
    )
    return organization


# --- members -----------------------------------------------------------------------------------
def _owner_count(organization: Organization) -> int:
    return Membership.objects.filter(organization=organization, role=Role.OWNER).count()


def _lock_memberships(organization: Organization) -> None:
    # Serialise changes to one organization's members, so two concurrent demotions
    # cannot both see "another owner is left".
    Organization.objects.select_for_update().filter(pk=organization.pk).first()


@transaction.atomic
def change_member_role(
    *, membership: Membership, role: str, actor: User, origin: Origin | None = None
) -> Membership:
    if role not in Role.values:
        raise ServiceError("Choose one of the listed roles.", field="role")
    organization = membership.organization
    _lock_memberships(organization)
    membership.refresh_from_db()
    acting = require_role(actor, organization, Role.ADMIN)
    if Role.OWNER in (role, membership.role) and not acting.has_role(Role.OWNER):
        raise ServiceError("Only an owner can grant or take away the owner role.", status=403)
    if membership.role == role:
        return membership
    if membership.role == Role.OWNER and _owner_count(organization) <= 1:
        raise ServiceError("This is the last owner. Make someone else an owner first.", status=409)
    old = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    record_audit_event(
        action="member.role_changed",
        actor=actor,
        organization=organization,
        target=membership.user.email,
        data={"from": old, "to": role},
        origin=origin,
    )
    return membership


@transaction.atomic
def remove_member(*, membership: Membership, actor: User, origin: Origin | None = None) -> None:
    organization = membership.organization
    _lock_memberships(organization)
    if not Membership.objects.filter(pk=membership.pk).exists():
        return  # already gone: removing twice is not an error
    membership.refresh_from_db()
    if membership.user_id != actor.pk:
        acting = require_role(actor, organization, Role.ADMIN)
        if membership.role == Role.OWNER and not acting.has_role(Role.OWNER):
            raise ServiceError("Only an owner can remove an owner.", status=403)
    if membership.role == Role.OWNER and _owner_count(organization) <= 1:
        raise ServiceError("The last owner cannot be removed. Make someone else an owner first.", status=409)
    email = membership.user.email
    membership.delete()
    record_audit_event(
        action="member.left" if membership.user_id == actor.pk else "member.removed",
        actor=actor,
        organization=organization,
        target=email,
        origin=origin,
    )


def leave_organization(*, organization: Organization, user: User, origin: Origin | None = None) -> None:
    remove_member(membership=_membership_of(user, organization), actor=user, origin=origin)


# --- invitations -------------------------------------------------------------------------------
def invitation_token(invitation: Invitation) -> str:
    return signing.dumps(invitation.pk, salt=INVITATION_SALT)


def invitation_from_token(token: str) -> Invitation | None:
    try:
        pk = signing.loads(token, salt=INVITATION_SALT)
    except signing.BadSignature:
        return None
    return Invitation.objects.select_related("organization").filter(pk=pk).first()


def _normalize_email(email: str) -> str:
    email = (email or "").strip()
    try:
        validate_email(email)
    except ValidationError:
        raise ServiceError("Enter a valid e-mail address.", field="email") from None
    local, _, domain = email.rpartition("@")
    return f"{local}@{domain.lower()}"


@transaction.atomic
def invite_member(
    *, organization: Organization, email: str, role: str, actor: User, origin: Origin | None = None
) -> Invitation:
    acting = require_role(actor, organization, Role.ADMIN)
    email = _normalize_email(email)
    if role not in Role.values:
        raise ServiceError("Choose one of the listed roles.", field="role")
    if role == Role.OWNER and not acting.has_role(Role.OWNER):
        raise ServiceError("Only an owner can invite another owner.", field="role", status=403)
    if Membership.objects.filter(organization=organization, user__email__iexact=email).exists():
        raise ServiceError(f"{email} is already a member of this organization.", field="email", status=409)
    now = timezone.now()
    # A new invitation to the same address replaces the pending one.
    Invitation.objects.pending().filter(organization=organization, email__iexact=email).update(revoked_at=now)
    invitation = Invitation.objects.create(
        organization=organization,
        email=email,
        role=role,
        invited_by=actor,
        expires_at=now + timedelta(days=settings.INVITATION_TTL_DAYS),
    )
    record_audit_event(
        action="invitation.sent",
        actor=actor,
        organization=organization,
        target=email,
        data={"role": role, "invitation": invitation.pk},
        origin=origin,
    )
    transaction.on_commit(lambda: tasks.send_invitation_email_task.delay(invitation.pk))
    return invitation


@transaction.atomic
def revoke_invitation(*, invitation: Invitation, actor: User, origin: Origin | None = None) -> None:
    require_role(actor, invitation.organization, Role.ADMIN)
    changed = Invitation.objects.filter(
        pk=invitation.pk, accepted_at__isnull=True, revoked_at__isnull=True
    ).update(revoked_at=timezone.now())
    if changed:
        record_audit_event(
            action="invitation.revoked",
            actor=actor,
            organization=invitation.organization,
            target=invitation.email,
            origin=origin,
        )


def _verified_emails(user: User) -> set[str]:
    return {
        e.lower()
        for e in EmailAddress.objects.filter(user=user, verified=True).values_list("email", flat=True)
    }


@transaction.atomic
def accept_invitation(*, invitation: Invitation, user: User, origin: Origin | None = None) -> Membership:
    status = invitation.status
    if status == "accepted":
        raise ServiceError("This invitation has already been used.", status=410)
    if status == "revoked":
        raise ServiceError("This invitation was withdrawn. Ask for a new one.", status=410)
    if status == "expired":
        raise ServiceError("This invitation has expired. Ask for a new one.", status=410)
    if invitation.email.lower() not in _verified_emails(user):
        raise ServiceError(
            f"This invitation was sent to {invitation.email}. Sign in with that address "
            "(verified) to accept it.",
            status=403,
        )
    if Membership.objects.filter(organization=invitation.organization, user=user).exists():
        raise ServiceError("You are already a member of this organization.", status=409)
    # Claim the invitation with a filtered update: exactly one acceptance wins.
    claimed = Invitation.objects.filter(
        pk=invitation.pk, accepted_at__isnull=True, revoked_at__isnull=True
    ).update(accepted_at=timezone.now(), accepted_by=user)
    if claimed != 1:
        raise ServiceError("This invitation has already been used.", status=410)
    try:
        with transaction.atomic():
            membership = Membership.objects.create(
                organization=invitation.organization, user=user, role=invitation.role
            )
    except IntegrityError:
        raise ServiceError("You are already a member of this organization.", status=409) from None
    record_audit_event(
        action="invitation.accepted",
        actor=user,
        organization=invitation.organization,
        target=user.email,
        data={"role": invitation.role, "invitation": invitation.pk},
        origin=origin,
    )
    return membership


# --- users ------------------------------------------------------------------------------------
@transaction.atomic
def ensure_verified_user(
    *, email: str, password: str, is_staff: bool = False, origin: Origin | None = None
) -> tuple[User, bool]:
    """Find or create a user with a verified address (for seeding and operator commands).

    Returns ``(user, created)``. A new user gets a personal organization like any sign-up.
    """

    email = _normalize_email(email)
    existing = EmailAddress.objects.filter(email__iexact=email).select_related("user").first()
    if existing:
        return existing.user, False
    user = get_user_model().objects.create_user(
        username=email.split("@")[0][:30] + f"-{get_user_model().objects.count() + 1}",
        email=email,
        password=password,
        is_staff=is_staff,
        is_superuser=is_staff,
    )
    EmailAddress.objects.create(user=user, email=email, verified=True, primary=True)
    record_audit_event(action="account.created_by_operator", actor=None, target=email, origin=origin)
    create_personal_organization(user=user, origin=origin)
    return user, True


# --- API tokens -------------------------------------------------------------------------------

API_TOKEN_MAX_DAYS = 3650
API_TOKEN_TOUCH_SECONDS = 60


def _api_token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@transaction.atomic
def create_api_token(
    *,
    user: User,
    name: str,
    organization: Organization | None = None,
    read_only: bool = False,
    expires_in_days: int | None = None,
    origin: Origin | None = None,
) -> tuple[ApiToken, str]:
    """A new personal token; returns ``(token, secret)``. Only the secret's SHA-256 is
    stored: the caller shows the secret once and it can never be shown again."""

    name = " ".join((name or "").split())
    if any(ord(ch) < 32 for ch in name):
        raise ServiceError("Token names cannot contain control characters.", field="name")
    if not name:
        raise ServiceError("Give the token a name.", field="name")
    if len(name) > 100:
        raise ServiceError("Keep the name to 100 characters or fewer.", field="name")
    if organization is not None:
        _membership_of(user, organization)
    expires_at = None
    if expires_in_days is not None:
        if not 1 <= int(expires_in_days) <= API_TOKEN_MAX_DAYS:
            raise ServiceError(
                f"A token expires after 1 to {API_TOKEN_MAX_DAYS} days (or never).", field="expires_in_days"
            )
        expires_at = timezone.now() + timedelta(days=int(expires_in_days))
    prefix = secrets.token_hex(4)
    secret = f"sp_{prefix}_{secrets.token_urlsafe(32)}"
    token = ApiToken.objects.create(
        user=user,
        organization=organization,
        name=name,
        prefix=prefix,
        token_hash=_api_token_hash(secret),
        read_only=read_only,
        expires_at=expires_at,
    )
    record_audit_event(
        action="token.create",
        actor=user,
        organization=organization,
        target=f"token {prefix}",
        data={
            "name": name,
            "read_only": read_only,
            "expires_at": expires_at.isoformat() if expires_at else None,
            "organization": organization.pk if organization else None,
        },
        origin=origin,
    )
    return token, secret


@transaction.atomic
def revoke_api_token(*, token: ApiToken, actor: User, origin: Origin | None = None) -> None:
    """Revoke one of the actor's own tokens; revoking twice is not an error."""

    if token.user_id != actor.pk:
        raise ServiceError("There is no such token.", status=404)
    changed = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    if changed:
        record_audit_event(
            action="token.revoke",
            actor=actor,
            organization=token.organization,
            target=f"token {token.prefix}",
            data={"name": token.name},
            origin=origin,
        )


def authenticate_api_token(secret: str) -> ApiToken | None:
    """The active token ``secret`` belongs to (its user active too), else None."""

    parts = (secret or "").split("_", 2)
    if len(parts) != 3 or parts[0] != "sp" or not parts[1] or len(secret) > 200:
        return None
    token = ApiToken.objects.select_related("user", "organization").filter(prefix=parts[1]).first()
    if token is None or not hmac.compare_digest(token.token_hash, _api_token_hash(secret)):
        return None
    if not token.is_active or not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or token.last_used_at < now - timedelta(seconds=API_TOKEN_TOUCH_SECONDS):
        # At most one write a minute per token, however busy it is.
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


# --- archived projects ---------------------------------------------------------------------------
def purge_project(
    *, project: Project, actor: User, confirmation: str, origin: Origin | None = None
) -> Project:
    """ "Delete for good" an archived project (admins and owners, typing its name): it leaves the
    archive and answers 404 from then on. Its rows stay, because usage records, invoice lines,
    backups and the audit log refer to them; its deploy key is erased. Refused while any of its
    environments is not destroyed. Purging a purged project again changes nothing."""
    with transaction.atomic():
        locked = Project.objects.select_for_update().get(pk=project.pk)
        require_role(actor, locked.organization, Role.ADMIN)
        if locked.purged_at is not None:
            return locked
        if " ".join(confirmation.split()) != locked.name:
            raise ServiceError("Type the project's name exactly to confirm.", field="confirmation")
        environments = list(locked.environments.values_list("status", flat=True))
        if not environments or any(status != EnvironmentStatus.DESTROYED for status in environments):
            raise ServiceError(
                "Only a project whose every environment is destroyed can be deleted for good.", status=409
            )
        locked.purged_at = timezone.now()
        locked.deploy_key_private, locked.deploy_key_public, locked.ssh_known_hosts = b"", "", ""
        locked.deploy_key_created_at = None
        locked.save(
            update_fields=[
                "purged_at",
                "deploy_key_private",
                "deploy_key_public",
                "ssh_known_hosts",
                "deploy_key_created_at",
            ]
        )
        record_audit_event(
            action="project.purged",
            actor=actor,
            organization=locked.organization,
            target=f"project:{locked.pk} {locked.name}",
            data={"project": locked.pk, "environments": len(environments)},
            origin=origin,
        )
    return locked


# --- ssh deploy keys -----------------------------------------------------------------------------
def issue_deploy_key(*, project: Project) -> str:
    """Give the project a new Ed25519 deploy key (for services that checked the role
    already, e.g. at creation); the old one, if any, is gone. Returns the public key."""
    private, public = generate_ssh_key(f"stackport-project-{project.pk}")
    project.deploy_key_public, project.deploy_key_private = public, encrypt(private)
    project.deploy_key_created_at = timezone.now()
    project.save(update_fields=["deploy_key_public", "deploy_key_private", "deploy_key_created_at"])
    return public


@transaction.atomic
def rotate_deploy_key(*, project: Project, actor: User, origin: Origin | None = None) -> str:
    """The project's first deploy key, or a new one replacing the old (fetches with the old
    key stop working at once: the customer adds the new public key to their git host)."""
    require_role(actor, project.organization, Role.ADMIN)
    project = Project.objects.select_for_update().get(pk=project.pk)
    replaced = bool(project.deploy_key_public)
    public = issue_deploy_key(project=project)
    record_audit_event(
        action="project.deploy_key_rotate" if replaced else "project.deploy_key_create",
        actor=actor,
        organization=project.organization,
        target=f"project {project.name}",
        data={"public_key": public},
        origin=origin,
    )
    return public


def deploy_key_of(project: Project) -> str | None:
    """The private half of the project's deploy key (for the worker's git over ssh only)."""
    return decrypt(project.deploy_key_private) if project.deploy_key_private else None


@transaction.atomic
def forget_ssh_host_keys(*, project: Project, actor: User, origin: Origin | None = None) -> None:
    """Forget the git servers' host keys recorded on first use: the next fetch over ssh
    accepts and records the key it is shown (for a server whose key really changed)."""
    require_role(actor, project.organization, Role.ADMIN)
    changed = Project.objects.filter(pk=project.pk).exclude(ssh_known_hosts="").update(ssh_known_hosts="")
    if changed:
        record_audit_event(
            action="project.ssh_host_keys_forget",
            actor=actor,
            organization=project.organization,
            target=f"project {project.name}",
            origin=origin,
        )


@transaction.atomic
def record_ssh_host_keys(*, project_id: int, known_hosts: str) -> None:
    """Add the host keys a fetch accepted on first use to the project's (the worker's call);
    lines it has already stay, so two fetches at once lose nothing."""
    project = Project.objects.select_for_update().filter(pk=project_id).first()
    if project is None:
        return
    have = project.ssh_known_hosts.splitlines()
    new = [line for line in known_hosts.splitlines() if line.strip() and line not in have]
    if not new:
        return
    project.ssh_known_hosts = "\n".join([*have, *new]) + "\n"
    project.save(update_fields=["ssh_known_hosts"])
    record_audit_event(
        action="project.ssh_host_key_record",
        organization=project.organization,
        target=f"project {project.name}",
        data={"host_keys": new},
    )
