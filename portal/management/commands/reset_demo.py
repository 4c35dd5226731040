"""Put the demo back as `make run` made it: the demo customer's stacks destroyed and deployed
afresh; with --sales, every sales demo removed now. Refused in production."""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from portal.demos import destroy_for_cleanup, expire_demos
from projects.models import Environment, EnvironmentStatus, Membership, Organization, Project, User
from stacks.models import ACTIVE_OPERATION_STATUSES, Operation
from stacks.runtime.operations import run_operation


def wait_for(operation: Operation, timeout: float = 600) -> str:
    """Run the operation here (or wait for the worker that claimed it) until it ends."""
    run_operation(operation.pk)
    deadline = time.monotonic() + timeout
    while True:
        operation.refresh_from_db()
        if operation.status not in ACTIVE_OPERATION_STATUSES or time.monotonic() > deadline:
            return operation.status
        time.sleep(1)
        run_operation(operation.pk)  # picks it up if the worker holding it died


class Command(BaseCommand):
    help = "Destroy the demo customer's stacks and deploy the pre-built ones again (development and demos)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--email", default="demo@stackport.localhost")
        parser.add_argument("--sales", action="store_true", help="also remove every sales demo now")

    def handle(self, *args: Any, email: str, sales: bool, **options: Any) -> None:
        if settings.PRODUCTION:
            raise CommandError(
                "reset_demo destroys stacks of the demo customer; it never runs in production."
            )
        user = User.objects.filter(email=email).first()
        membership = Membership.objects.filter(user=user).select_related("organization").first()
        if user is None or membership is None:
            raise CommandError(f"no demo user {email}; run seed_demo first")
        self._destroy(Environment.objects.filter(project__organization=membership.organization))
        Project.objects.filter(organization=membership.organization).delete()
        if sales:
            demos = Organization.objects.filter(is_demo=True)
            demos.update(demo_expires_at=timezone.now())
            self._destroy(Environment.objects.filter(project__organization__in=demos))
            report = expire_demos()
            self.stdout.write(f"removed {report['removed']} sales demo(s)")
        call_command("seed_demo_stacks", email=email, stdout=self.stdout)

    def _destroy(self, environments: Any) -> None:
        for environment in environments.exclude(status=EnvironmentStatus.DESTROYED):
            active = Operation.objects.filter(
                environment=environment, status__in=ACTIVE_OPERATION_STATUSES
            ).first()
            if active is not None:
                wait_for(active)
            operation = destroy_for_cleanup(environment, reason="reset_demo")
            if operation is not None:
                status = wait_for(operation)
                self.stdout.write(f"destroyed {environment} ({status})")
