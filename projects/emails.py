"""E-mails about tenancy, rendered from templates/projects/email/."""

from django.conf import settings
from django.core.mail import send_mail
from django.template.loader import render_to_string
from django.urls import reverse

from projects import services
from projects.models import Invitation


def send_invitation_email(invitation: Invitation) -> None:
    url = settings.STACKPORT_BASE_URL + reverse(
        "projects:invitation", kwargs={"token": services.invitation_token(invitation)}
    )
    context = {"invitation": invitation, "url": url}
    # A mail subject is plain text: no HTML escaping ("walk's organization", not "walk&#x27;s").
    subject = " ".join(render_to_string("projects/email/invitation_subject.txt", context).split())
    body = render_to_string("projects/email/invitation_message.txt", context)
    send_mail(subject, body, None, [invitation.email])
