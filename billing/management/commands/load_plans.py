"""Create or update the plans and price lists from billing/plans.yaml (idempotent)."""

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from billing.services import load_plans


class Command(BaseCommand):
    help = "Load plans and unit prices from billing/plans.yaml (or --file)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--file", type=Path, default=None, help="Another plans file")

    def handle(self, *args: Any, **options: Any) -> None:
        counts = load_plans(options["file"])
        self.stdout.write(f"{counts['plans']} plans, {counts['price_lists']} price lists loaded.")
