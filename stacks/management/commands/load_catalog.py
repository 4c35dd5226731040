"""Load the catalog files into the database (idempotent; refuses invalid files)."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from stacks.catalog.loader import CatalogError, load_catalog


class Command(BaseCommand):
    help = "Load regions, kernels, frameworks, components, versions and templates from stacks/catalog/."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "files", nargs="*", type=Path, help="catalog files (default: all of stacks/catalog/)"
        )

    def handle(self, *args: object, files: list[Path], **options: object) -> None:
        try:
            report = load_catalog(files or None)
        except CatalogError as exc:
            raise CommandError(f"catalog refused, nothing was written: {exc}") from None
        self.stdout.write(f"catalog loaded: {report}")
