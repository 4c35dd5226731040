"""Public catalog page: what the hoster offers, as prospects see it (no login)."""

from __future__ import annotations

from django.db.models import Prefetch
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from stacks.models import (
    Component,
    ComponentVersion,
    KernelVersion,
    Region,
    StackTemplate,
    StackTemplateComponent,
)


@require_GET
def catalog(request: HttpRequest) -> HttpResponse:
    components = Component.objects.prefetch_related(
        Prefetch("versions", queryset=ComponentVersion.objects.order_by("position", "version"))
    )
    templates = StackTemplate.objects.filter(is_active=True).prefetch_related(
        Prefetch("components", queryset=StackTemplateComponent.objects.select_related("component", "size"))
    )
    return render(
        request,
        "stacks/catalog.html",
        {
            "components": components,
            "templates": templates,
            "regions": Region.objects.filter(is_active=True).prefetch_related("kernel_lines"),
            "kernels": KernelVersion.objects.all(),
        },
    )
