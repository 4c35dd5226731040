"""allauth hooks: a new user gets an organization of their own, in the same transaction."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

from allauth.account.adapter import DefaultAccountAdapter
from django.conf import settings
from django.db import transaction
from django.http import HttpRequest

from projects import services


def user_display(user: Any) -> str:
    """How allauth names a user in its messages: the e-mail address."""
    return str(getattr(user, "email", "") or "your account")


class AccountAdapter(DefaultAccountAdapter):
    def send_mail(self, template_prefix: str, email: str, context: dict[str, Any]) -> None:
        """allauth's mails name the portal (STACKPORT_SITE_NAME at STACKPORT_BASE_URL), not
        whatever host the request came in on (127.0.0.1:8000 behind a proxy)."""
        site = SimpleNamespace(
            name=settings.STACKPORT_SITE_NAME, domain=urlsplit(settings.STACKPORT_BASE_URL).netloc
        )
        super().send_mail(template_prefix, email, {**context, "current_site": site})

    def format_email_subject(self, subject: str) -> str:
        return f"[{settings.STACKPORT_SITE_NAME}] {subject}"

    def save_user(self, request: HttpRequest, user: Any, form: Any, commit: bool = True) -> Any:
        with transaction.atomic():
            user = super().save_user(request, user, form, commit=commit)
            if commit:
                origin = services.Origin.from_request(request)
                services.record_audit_event(action="account.signed_up", actor=user, origin=origin)
                services.create_personal_organization(user=user, origin=origin)
        return user
