"""Seed the demo customer (and a staff login) for `make run`. Idempotent; refused in production."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from projects.services import ensure_verified_user

DEMO_USERS = [
    ("demo@stackport.localhost", False),
    ("admin@stackport.localhost", True),
]
DEMO_PASSWORD = "stackport-demo"


class Command(BaseCommand):
    help = "Create the demo customer and a staff account with known passwords (development only)."

    def handle(self, *args: object, **options: object) -> None:
        if settings.PRODUCTION:
            raise CommandError(
                "seed_demo creates accounts with known passwords; it never runs in production."
            )
        for email, staff in DEMO_USERS:
            _, created = ensure_verified_user(email=email, password=DEMO_PASSWORD, is_staff=staff)
            self.stdout.write(f"{'created' if created else 'exists '}  {email}{' (staff)' if staff else ''}")
