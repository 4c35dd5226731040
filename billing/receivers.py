"""Billing's answers to tenancy's signals: each calls one service."""

from __future__ import annotations

from typing import Any

from django.dispatch import receiver

from billing.services import start_trial
from projects.signals import organization_created


@receiver(organization_created, dispatch_uid="billing.start_trial")
def start_trial_for_new_organization(
    sender: Any, organization: Any, origin: Any = None, **kwargs: Any
) -> None:
    start_trial(organization=organization, origin=origin)
