"""Shared selection and error handling for the image pipeline commands."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from stacks.catalog import pipeline
from stacks.models import ComponentVersion


class ImageCommand(BaseCommand):
    steps: tuple[str, ...] = ()

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--component", action="append", default=[], help="component code (repeatable)")
        parser.add_argument(
            "--only-version", dest="versions", action="append", default=[], help="version (repeatable)"
        )

    def selected(self, components: list[str], versions: list[str]) -> Iterable[ComponentVersion]:
        qs = ComponentVersion.objects.select_related("component").order_by("component__position", "position")
        if components:
            qs = qs.filter(component__code__in=components)
        if versions:
            qs = qs.filter(version__in=versions)
        if not qs.exists():
            raise CommandError(
                "no component version matches; load the catalog first (manage.py load_catalog)"
            )
        return list(qs)

    def handle(self, *args: Any, component: list[str], versions: list[str], **options: Any) -> None:
        try:
            client = pipeline.docker_client()
            failed = []
            for cv in self.selected(component, versions):
                ok = True
                for step in self.steps:
                    if ok:
                        ok = getattr(pipeline, f"{step}_version")(cv, client=client, log=self.stdout.write)
                if not ok:
                    failed.append(f"{cv}: {cv.failure_reason or 'not verified'}")
        except pipeline.PipelineError as exc:
            raise CommandError(str(exc)) from None
        if failed:
            self.stdout.write(self.style.WARNING("not available to customers:\n  " + "\n  ".join(failed)))
