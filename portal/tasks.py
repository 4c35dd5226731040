"""Portal-wide tasks: liveness of the worker and beat, and the sales demos' lifetime."""

import socket

from celery import shared_task
from django.core.cache import cache
from django.utils import timezone

from portal.demos import expire_demos, warn_expiring_demos

HEARTBEAT_KEY = "stackport:worker-heartbeat"


@shared_task(name="portal.ping_task")
def ping_task() -> dict[str, str]:
    """Answer from the worker: proves a task crossed the broker and ran."""
    return {"pong": socket.gethostname(), "at": timezone.now().isoformat()}


@shared_task(name="portal.heartbeat_task", ignore_result=True)
def heartbeat_task() -> None:
    cache.set(HEARTBEAT_KEY, timezone.now().isoformat(), timeout=None)


@shared_task(name="portal.warn_expiring_demos_task", ignore_result=True)
def warn_expiring_demos_task() -> int:
    return warn_expiring_demos()


@shared_task(name="portal.expire_demos_task", ignore_result=True)
def expire_demos_task() -> dict[str, int]:
    return expire_demos()
