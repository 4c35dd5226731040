"""Register a Docker host (or the local engine for every region with --local)."""

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from projects.services import ServiceError
from stacks.runtime.hosts import ensure_local_hosts, register_host


class Command(BaseCommand):
    help = "Add or update a Docker host: add_host NAME URL REGION [--kernel LINE], or add_host --local."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", nargs="?")
        parser.add_argument("url", nargs="?")
        parser.add_argument("region", nargs="?")
        parser.add_argument(
            "--kernel", help="the kernel line the host runs (read from the engine if omitted)"
        )
        parser.add_argument("--local", action="store_true", help="the local engine, for every Docker region")
        parser.add_argument("--pool", default="", help="routed hosts: the host's /16 (docs/backends.md)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["local"]:
                hosts = ensure_local_hosts(settings.STACKPORT_DEFAULT_DOCKER_URL)
            elif options["name"] and options["url"] and options["region"]:
                hosts = [
                    register_host(
                        name=options["name"],
                        url=options["url"],
                        region=options["region"],
                        kernel_line=options["kernel"],
                        address_pool=options["pool"],
                    )
                ]
            else:
                raise CommandError("give NAME URL REGION, or --local")
        except ServiceError as exc:
            raise CommandError(exc.message) from exc
        for host in hosts:
            state = (
                "answers"
                if host.last_seen_at and not host.last_error
                else f"does not answer: {host.last_error}"
            )
            self.stdout.write(
                f"{host.name}: {host.url} in {host.region.code}, kernel line "
                f"{host.kernel.line if host.kernel else '?'} (running {host.kernel_release or '?'}), "
                f"{host.cpus} CPUs, {host.memory_mb} MB; {state}"
            )
