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

from allauth.account.models import EmailAddress
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone
from django.utils.timesince import timesince

from projects.models import AuditEvent, Environment, EnvironmentStatus, Membership, Organization, Role, User
from projects.services import Origin, ServiceError, record_audit_event
from stacks.models import ACTIVE_OPERATION_STATUSES, Operation, Region, StackTemplate
from stacks.runtime import lifecycle

START_PERMISSION = "projects.start_demo"
DEMO_EMAIL_DOMAIN = "demo.stackport.invalid"
# Extensions offered on /support/demos/ (hours), and how far ahead a demo may ever run.
EXTEND_HOURS = (4, 24, 72)
MAX_AHEAD = timedelta(days=14)


@dataclass(frozen=True)
class DemoLogin:
    organization: Organization
    environment: Environment
    email: str
    password: str  # shown once, to the salesperson; only its hash is stored


def demo_lifetime() -> timedelta:
    return timedelta(hours=settings.STACKPORT_DEMO_LIFETIME_HOURS)


def duration_text(duration: timedelta) -> str:
    """A duration as people say it: "4 hours", "1 day, 6 hours" (never "4:00:00")."""
    now = timezone.now()
    return timesince(now - duration, now, depth=2).replace("\xa0", " ")


@dataclass(frozen=True)
class RunningDemo:
    organization: Organization
    salesperson: str
    time_left: str


def running_demos() -> list[RunningDemo]:
    """Demos not yet over, the soonest end first, with who started them."""
    now = timezone.now()
    organizations = list(
        Organization.objects.filter(is_demo=True, demo_expires_at__gt=now).order_by("demo_expires_at", "id")
    )
    started = {
        event.organization_id: event.actor_email
        for event in AuditEvent.objects.filter(organization__in=organizations, action="demo.start").only(
            "organization_id", "actor_email"
        )
    }
    return [
        RunningDemo(
            organization=org,
            salesperson=started.get(org.pk, ""),
            time_left=duration_text(org.demo_expires_at - now) if org.demo_expires_at else "",
        )
        for org in organizations
    ]


def _require_sales(actor: User) -> None:
    if not (actor.is_active and actor.is_staff and actor.has_perm(START_PERMISSION)):
        raise ServiceError("Managing demos needs the sales permission.", status=403)


def _running_demo_for_update(organization: Organization) -> Organization:
    locked = Organization.objects.select_for_update().filter(pk=organization.pk, is_demo=True).first()
    if locked is None:
        raise ServiceError("This is not a demo.", status=404)
    if locked.demo_expires_at is None or locked.demo_expires_at <= timezone.now():
        raise ServiceError("This demo has ended already.", status=409)
    return locked


@transaction.atomic
def extend_demo(
    *, organization: Organization, actor: User, hours: int, origin: Origin | None = None
) -> Organization:
    """Push a running demo's end ``hours`` later (one of EXTEND_HOURS), at most MAX_AHEAD
    from now; the salesperson is warned again before the new end."""
    _require_sales(actor)
    if hours not in EXTEND_HOURS:
        raise ServiceError("Choose one of the offered extensions.", field="hours")
    locked = _running_demo_for_update(organization)
    assert locked.demo_expires_at is not None
    was = locked.demo_expires_at
    new_end = was + timedelta(hours=hours)
    if new_end - timezone.now() > MAX_AHEAD:
        raise ServiceError(f"A demo runs at most {duration_text(MAX_AHEAD)} ahead.", field="hours")
    locked.demo_expires_at, locked.demo_warned_at = new_end, None
    locked.save(update_fields=["demo_expires_at", "demo_warned_at"])
    record_audit_event(
        action="demo.extend",
        actor=actor,
        organization=locked,
        target=locked.name,
        data={"was": was.isoformat(), "expires_at": new_end.isoformat(), "hours": hours},
        origin=origin,
    )
    return locked


@transaction.atomic
def end_demo_now(*, organization: Organization, actor: User, origin: Origin | None = None) -> int:
    """End a running demo at once: its environments are destroyed (the normal destroy
    operation) and the next clean-up pass removes the rows. Returns the destroys queued."""
    _require_sales(actor)
    locked = _running_demo_for_update(organization)
    was = locked.demo_expires_at
    locked.demo_expires_at = timezone.now()
    locked.save(update_fields=["demo_expires_at"])
    queued = 0
    for environment in Environment.objects.filter(project__organization=locked).exclude(
        status=EnvironmentStatus.DESTROYED
    ):
        try:
            if destroy_for_cleanup(environment, reason="demo.expired"):
                queued += 1
        except ServiceError:
            continue  # busy: the clean-up pass destroys it once its operation ends
    record_audit_event(
        action="demo.end",
        actor=actor,
        organization=locked,
        target=locked.name,
        data={"was": was.isoformat() if was else None},
        origin=origin,
    )
    return queued


@transaction.atomic
def start_demo(
    *, actor: User, template: str, region: str | None = None, prospect: str = "", origin: Origin | None = None
) -> DemoLogin:
    """A demo organization whose owner is a fresh login, with ``template`` deploying."""

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

    return lifecycle.destroy_unconfirmed(environment=environment, reason=reason)


def expire_demos() -> dict[str, int]:
    """One pass over the expired demos: destroy what still exists, delete the rows of
    those with nothing left. Audit rows stay (their organization becomes empty)."""

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
