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
