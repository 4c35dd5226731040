"""Access helpers for stacks' own objects, on top of tenancy's (``projects.access``):
someone else's object answers 404."""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpRequest

from projects.access import get_membership_for_user
from projects.models import Role
from stacks.models import Backup, Operation


def get_operation_for_user(request: HttpRequest, operation_id: int, *, role: str = Role.VIEWER) -> Any:
    """An operation of an environment the user may see; 404 otherwise."""
    operation = (
        Operation.objects.select_related("environment__project__organization").filter(pk=operation_id).first()
        if request.user.is_authenticated
        else None
    )
    if operation is None:
        raise Http404
    get_membership_for_user(request, operation.environment.project.organization_id, role=role)
    return operation


def get_backup_for_user(request: HttpRequest, backup_id: int, *, role: str = Role.VIEWER) -> Any:
    """A backup of an environment the user may see; 404 otherwise (another organization's too)."""

    backup = (
        Backup.objects.select_related("environment__project__organization").filter(pk=backup_id).first()
        if request.user.is_authenticated
        else None
    )
    if backup is None:
        raise Http404
    get_membership_for_user(request, backup.environment.project.organization_id, role=role)
    return backup
