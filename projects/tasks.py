"""Celery tasks for tenancy: thin wrappers that load by id and call one function."""

from celery import shared_task

from projects import emails
from projects.models import Invitation


@shared_task(
    name="projects.send_invitation_email_task",
    autoretry_for=(OSError,),
    retry_backoff=True,
    max_retries=5,
)
def send_invitation_email_task(invitation_id: int) -> None:
    invitation = (
        Invitation.objects.select_related("organization", "invited_by").filter(pk=invitation_id).first()
    )
    if invitation is None or invitation.status != "pending":
        return
    emails.send_invitation_email(invitation)


@shared_task(name="projects.warn_expiring_demos_task", ignore_result=True)
def warn_expiring_demos_task() -> int:
    from projects.demos import warn_expiring_demos

    return warn_expiring_demos()


@shared_task(name="projects.expire_demos_task", ignore_result=True)
def expire_demos_task() -> dict[str, int]:
    from projects.demos import expire_demos

    return expire_demos()


@shared_task(name="projects.finish_host_drain_task", bind=True, max_retries=360, ignore_result=True)
def finish_host_drain_task(self, host_id: int) -> None:  # type: ignore[no-untyped-def]
    """Marks a host draining once support's moves off it have ended (polls every 10 s)."""
    from stacks.support import finish_host_drain

    if not finish_host_drain(host_id=host_id):
        raise self.retry(countdown=10)
