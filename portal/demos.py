"""Sales demos: an organization with a pre-built stack running, a login to hand over, and
a lifetime after which everything of it is removed.

``start_demo`` makes the organization, its owner and the project in one transaction (the
deploy runs after commit like any customer's). ``warn_expiring_demos`` tells the
salesperson shortly before the end; ``expire_demos`` destroys the environments through
the normal destroy operation and deletes the rows only once every environment is
destroyed, so a failed clean-up is simply tried again by the next pass.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from projects.models import AuditEvent, Environment, EnvironmentStatus, Membership, Organization, Role, User
from projects.services import Origin, ServiceError, record_audit_event

if TYPE_CHECKING:
    from stacks.models import Operation

START_PERMISSION = "projects.start_demo"
DEMO_EMAIL_DOMAIN = "demo.stackport.invalid"


@dataclass(frozen=True)
class DemoLogin:
    organization: Organization
    environment: Environment
    email: str
    password: str  # shown once, to the salesperson; only its hash is stored


def demo_lifetime() -> timedelta:
    return timedelta(hours=settings.STACKPORT_DEMO_LIFETIME_HOURS)


@transaction.atomic
def start_demo(
    *, actor: User, template: str, region: str | None = None, prospect: str = "", origin: Origin | None = None
) -> DemoLogin:
    """A demo organization whose owner is a fresh login, with ``template`` deploying."""
    from allauth.account.models import EmailAddress
    from django.contrib.auth import get_user_model

    from stacks.models import Region, StackTemplate
    from stacks.runtime import lifecycle

    if not (actor.is_active and actor.is_staff and actor.has_perm(START_PERMISSION)):
        raise ServiceError("Starting demos needs the sales permission.", status=403)
    stack = StackTemplate.objects.filter(code=template, is_active=True).first()
    if stack is None:
        raise ServiceError("Choose one of the pre-built stacks.", field="template")
    region_obj = (
        Region.objects.filter(code=region, is_active=True).first()
        if region
        else Region.objects.filter(is_active=True, backend="docker").first()
    )
    if region_obj is None:
        raise ServiceError("Choose one of the offered regions.", field="region")
    prospect = " ".join(str(prospect).split())[:60]
    token = secrets.token_hex(4)
    now = timezone.now()
    expires_at = now + demo_lifetime()
    organization = Organization.objects.create(
        name=f"Demo {prospect or token}"[:100], is_demo=True, demo_expires_at=expires_at
    )
    email = f"demo-{token}@{DEMO_EMAIL_DOMAIN}"
    password = secrets.token_urlsafe(12)
    user = get_user_model().objects.create_user(username=f"demo-{token}", email=email, password=password)
    EmailAddress.objects.create(user=user, email=email, verified=True, primary=True)
    Membership.objects.create(organization=organization, user=user, role=Role.OWNER)
    environment = lifecycle.create_project(
        organization=organization,
        actor=None,
        name=stack.name,
        region=region_obj.code,
        template=stack.code,
        origin=origin,
        system=True,
    )
    record_audit_event(
        action="demo.start",
        actor=actor,
        organization=organization,
        target=email,
        data={"template": stack.code, "expires_at": expires_at.isoformat()},
        origin=origin,
    )
    return DemoLogin(organization, environment, email, password)


def _salesperson_email(organization: Organization) -> str:
    event = (
        AuditEvent.objects.filter(organization=organization, action="demo.start")
        .order_by("created_at")
        .first()
    )
    return event.actor_email if event else ""


def warn_expiring_demos() -> int:
    """E-mail the salesperson of each demo ending within STACKPORT_DEMO_WARN_MINUTES (once)."""
    now = timezone.now()
    soon = now + timedelta(minutes=settings.STACKPORT_DEMO_WARN_MINUTES)
    count = 0
    for organization in Organization.objects.filter(
        is_demo=True, demo_warned_at__isnull=True, demo_expires_at__gt=now, demo_expires_at__lte=soon
    ):
        # Claimed with a filtered update: two beat runs never warn twice.
        if not Organization.objects.filter(pk=organization.pk, demo_warned_at__isnull=True).update(
            demo_warned_at=now
        ):
            continue
        assert organization.demo_expires_at is not None
        to = _salesperson_email(organization)
        if to:
            send_mail(
                f"[Stackport] Demo {organization.name} ends at {organization.demo_expires_at:%H:%M} UTC",
                f"The demo organization {organization.name} and everything running in it will be "
                f"removed at {organization.demo_expires_at:%Y-%m-%d %H:%M} UTC.",
                None,
                [to],
            )
        record_audit_event(action="demo.warned", organization=organization, target=to)
        count += 1
    return count


def destroy_for_cleanup(environment: Environment, reason: str = "demo.expired") -> Operation | None:
    """The normal destroy operation (no actor: the hoster's own clean-up); None when the
    environment is destroyed already. Refused (ServiceError) while another one runs."""
    from stacks.runtime import lifecycle

    return lifecycle.destroy_unconfirmed(environment=environment, reason=reason)


def expire_demos() -> dict[str, int]:
    """One pass over the expired demos: destroy what still exists, delete the rows of
    those with nothing left. Audit rows stay (their organization becomes empty)."""
    from stacks.models import ACTIVE_OPERATION_STATUSES, Operation

    report = {"destroying": 0, "removed": 0}
    for organization in Organization.objects.filter(is_demo=True, demo_expires_at__lte=timezone.now()):
        environments = Environment.objects.filter(project__organization=organization)
        busy = set(
            Operation.objects.filter(
                environment__in=environments, status__in=ACTIVE_OPERATION_STATUSES
            ).values_list("environment_id", flat=True)
        )
        left = False
        for environment in environments.exclude(status=EnvironmentStatus.DESTROYED):
            left = True
            if environment.pk in busy:
                continue  # its destroy (or something else) is running: wait for it
            try:
                if destroy_for_cleanup(environment):
                    report["destroying"] += 1
            except ServiceError:
                continue
        if not left and not busy:
            _remove(organization)
            report["removed"] += 1
    return report


@transaction.atomic
def _remove(organization: Organization) -> None:
    users = list(
        User.objects.filter(memberships__organization=organization, email__endswith=f"@{DEMO_EMAIL_DOMAIN}")
    )
    name = organization.name
    organization.delete()  # projects, environments, releases, operations, members
    for user in users:
        if not user.memberships.exists():
            user.delete()
    record_audit_event(action="demo.removed", target=name)
