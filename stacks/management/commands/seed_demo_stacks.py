"""Deploy the demo customer's pre-built stacks (make run). Idempotent; refused in production."""

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from projects.models import Membership, Project, User
from projects.services import ServiceError
from stacks.runtime import lifecycle

DEMO_STACKS = [("Demo static site", "static-site"), ("Demo Python app", "python-web")]


class Command(BaseCommand):
    help = "Queue deploys of the demo customer's pre-built stacks (development only)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--email", default="demo@stackport.localhost")

    def handle(self, *args: Any, email: str, **options: Any) -> None:
        if settings.PRODUCTION:
            raise CommandError("seed_demo_stacks is for development and demos only.")
        user = User.objects.filter(email=email).first()
        membership = Membership.objects.filter(user=user).select_related("organization").first()
        if user is None or membership is None:
            raise CommandError(f"no demo user {email}; run seed_demo first")
        for name, template in DEMO_STACKS:
            project = Project.objects.filter(organization=membership.organization, name=name).first()
            if project is not None:
                env = project.environments.first()
                self.stdout.write(f"exists   {name}: {env.public_url if env else '-'}")
                continue
            try:
                env = lifecycle.create_project(
                    organization=membership.organization,
                    actor=user,
                    name=name,
                    region="eu-central",
                    template=template,
                )
            except ServiceError as exc:
                self.stdout.write(self.style.WARNING(f"skipped  {name}: {exc.message}"))
                continue
            self.stdout.write(f"deploying {name}: {env.public_url}")
