"""allauth hooks: a new user gets an organization of their own, in the same transaction."""

from __future__ import annotations

from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from django.db import transaction
from django.http import HttpRequest

from projects import services


class AccountAdapter(DefaultAccountAdapter):
    def save_user(self, request: HttpRequest, user: Any, form: Any, commit: bool = True) -> Any:
        with transaction.atomic():
            user = super().save_user(request, user, form, commit=commit)
            if commit:
                origin = services.Origin.from_request(request)
                services.record_audit_event(action="account.signed_up", actor=user, origin=origin)
                services.create_personal_organization(user=user, origin=origin)
        return user
