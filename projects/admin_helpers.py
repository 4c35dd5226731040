"""What every app's admin shares: read-only inlines, support actions that call services
(gated by the ``projects.operate_stacks`` permission), and the page of an action that asks
for one more input."""

from __future__ import annotations

from typing import Any, cast

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse

from projects.models import User
from projects.services import Origin, ServiceError

OPERATE_PERMISSION = "projects.operate_stacks"


def staff_user(request: HttpRequest) -> User:
    return cast(User, request.user)  # the admin lets only signed-in staff in


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class SupportActionsMixin:
    """Admin actions marked ``permissions=["operate"]`` need ``projects.operate_stacks``."""

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_staff and request.user.has_perm(OPERATE_PERMISSION))

    def run_service(self, request: HttpRequest, objects: Any, call: Any, done: str) -> None:
        """``call(obj, origin)`` for each object; one message for the successes, one per refusal."""
        origin = Origin.from_request(request)
        ok = 0
        for obj in objects:
            try:
                call(obj, origin)
                ok += 1
            except ServiceError as exc:
                self.message_user(request, f"{obj}: {exc.message}", messages.ERROR)  # type: ignore[attr-defined]
        if ok:
            self.message_user(request, done.format(count=ok), messages.SUCCESS)  # type: ignore[attr-defined]


def action_form(
    request: HttpRequest, queryset: QuerySet[Any], action: str, title: str, field: dict[str, Any]
) -> TemplateResponse:
    """The intermediate page of an action that needs one more input (a reason, a host)."""
    return TemplateResponse(
        request,
        "support/admin/action_form.html",
        {
            **admin.site.each_context(request),
            "title": title,
            "objects": queryset,
            "action": action,
            "field": field,
            "opts": queryset.model._meta,
        },
    )
