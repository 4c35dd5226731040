"""A component's logs (with a live tail and a download) and its resource charts.

The log views are the only pages that call a backend, and only to read. Log lines are
whatever the containers printed: they are shown escaped, never interpreted. Charts come
from the samples the worker records (``stacks.runtime.reconcile.record_samples``), aggregated in
SQL so a day of samples stays a few hundred points.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Avg, Count, Max, QuerySet
from django.db.models.functions import ExtractMinute, Floor, TruncHour, TruncMinute
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET

from projects.access import AuthedRequest, get_environment_for_user
from projects.models import Environment, EnvironmentStatus
from stacks.backends.base import BackendError
from stacks.models import ResourceSampleRow, StackComponent
from stacks.runtime import operations

log = structlog.get_logger(__name__)

PAGE_LINES = 200
DOWNLOAD_LINES = 5000
LINE_MAX_CHARS = 4000
TAIL_STATUSES = (EnvironmentStatus.RUNNING, EnvironmentStatus.DEGRADED, EnvironmentStatus.DEPLOYING)
TIMESTAMP_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)")
RANGES = {"hour": (timedelta(hours=1), 1), "day": (timedelta(days=1), 5)}  # window, minutes per point


# --- logs -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LogLine:
    source: str  # the replica that printed it
    at: str  # the engine's timestamp (RFC 3339, sortable as text); empty if none
    text: str


def parse_line(raw: str) -> LogLine:
    """``<replica> <timestamp> <text>`` as the backends give lines; anything else as text."""
    parts = raw.split(" ", 2)
    if len(parts) >= 2 and TIMESTAMP_RE.fullmatch(parts[1]):
        return LogLine(parts[0], parts[1], (parts[2] if len(parts) > 2 else "")[:LINE_MAX_CHARS])
    return LogLine("", "", raw[:LINE_MAX_CHARS])


def read_logs(environment: Environment, component: str, tail: int) -> tuple[list[LogLine], str]:
    """The component's last ``tail`` lines of every replica, oldest first; or an error."""

    try:
        raw = operations.component_logs(environment, component, tail)
    except BackendError as exc:
        log.warning("logs_unavailable", environment=environment.pk, error=exc.message)
        return [], exc.message
    lines = [parse_line(line) for line in raw]
    if all(line.at for line in lines):  # interleave the replicas' lines in time
        lines.sort(key=lambda line: line.at)
    return lines, ""


def get_component(environment: Environment, component: str) -> StackComponent:
    sc = (
        StackComponent.objects.select_related("component", "size", "version")
        .filter(environment=environment, name=component)
        .first()
    )
    if sc is None:
        raise Http404
    return sc


@login_required
@require_GET
def component_logs(request: AuthedRequest, environment_id: int, component: str) -> HttpResponse:
    environment = get_environment_for_user(request, environment_id)
    sc = get_component(environment, component)
    after = request.GET.get("after", "")
    tailing = bool(request.htmx and not request.htmx.boosted and "after" in request.GET)
    lines, error = read_logs(environment, sc.name, PAGE_LINES)
    if tailing:  # only lines written since the last one shown
        lines = [line for line in lines if line.at > after]
    context = {
        "environment": environment,
        "project": environment.project,
        "component": sc,
        "lines": lines,
        "tailing": tailing,
        "error": error,
        "cursor": max([after, *(line.at for line in lines)]),
        # Following needs the lines' timestamps (to know which are new).
        "live": environment.status in TAIL_STATUSES and not error and all(line.at for line in lines),
    }
    if tailing:
        return render(request, "stacks/logs.html#tail", context)
    return render(request, "stacks/logs.html", context)


@login_required
@require_GET
def component_logs_download(request: AuthedRequest, environment_id: int, component: str) -> HttpResponse:
    environment = get_environment_for_user(request, environment_id)
    sc = get_component(environment, component)
    lines, error = read_logs(environment, sc.name, DOWNLOAD_LINES)
    if error:  # back to the viewer, which says why
        messages.error(request, f"The logs could not be downloaded: {error}")
        return redirect("stacks:component_logs", environment_id=environment.pk, component=sc.name)
    body = "".join(
        f"{line.source} {line.at} {line.text}\n" if line.at else f"{line.text}\n" for line in lines
    )
    response = HttpResponse(body, content_type="text/plain; charset=utf-8")
    # Only our ids and the component's slug: nothing the customer typed freely.
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="{environment.key}-{sc.name}-{stamp}.log"'
    return response


# --- resource charts ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    at: datetime
    cpu: float  # percent of one CPU, mean over the replicas and the bucket
    cpu_peak: float
    memory: float  # bytes, mean per replica
    memory_peak: float
    replicas: int


def series(environment: Environment, component: str, range_name: str) -> list[Point]:
    """Samples of the window aggregated per bucket (1 minute for an hour, 5 for a day)."""
    window, minutes = RANGES[range_name]
    since = timezone.now() - window
    rows = ResourceSampleRow.objects.filter(environment=environment, component=component, taken_at__gte=since)
    grouped: QuerySet[Any, dict[str, Any]]
    if minutes == 1:
        grouped = rows.annotate(bucket=TruncMinute("taken_at")).values("bucket")
    else:
        grouped = rows.annotate(
            hour=TruncHour("taken_at"), slot=Floor(ExtractMinute("taken_at") / minutes)
        ).values("hour", "slot")
    aggregated = grouped.annotate(
        cpu=Avg("cpu_percent"),
        cpu_peak=Max("cpu_percent"),
        memory=Avg("memory_bytes"),
        memory_peak=Max("memory_bytes"),
        replicas=Count("replica", distinct=True),
    ).order_by(*(["bucket"] if minutes == 1 else ["hour", "slot"]))
    points = []
    for row in aggregated:
        at = row["bucket"] if minutes == 1 else row["hour"] + timedelta(minutes=int(row["slot"]) * minutes)
        points.append(
            Point(
                at=at,
                cpu=round(float(row["cpu"] or 0), 2),
                cpu_peak=round(float(row["cpu_peak"] or 0), 2),
                memory=float(row["memory"] or 0),
                memory_peak=float(row["memory_peak"] or 0),
                replicas=int(row["replicas"]),
            )
        )
    return points


def sparkline(values: list[float], limit: float, width: int = 600, height: int = 80) -> dict[str, Any]:
    """SVG polyline points for ``values``, scaled so the limit (or the highest value) is
    the top; and where the limit's line goes."""
    if not values:
        return {"points": "", "limit_y": None}
    top = max(limit, max(values), 1e-9)

    def y(value: float) -> float:
        return height - 1 - (value / top) * (height - 2)

    step = width / max(len(values) - 1, 1)
    points = " ".join(f"{i * step:.1f},{y(v):.1f}" for i, v in enumerate(values))
    return {"points": points, "limit_y": f"{y(limit):.1f}" if limit else None}


def _range(request: AuthedRequest) -> str:
    value = request.GET.get("range", "hour")
    return value if value in RANGES else "hour"


@login_required
@require_GET
def component_metrics(request: AuthedRequest, environment_id: int, component: str) -> HttpResponse:
    environment = get_environment_for_user(request, environment_id)
    sc = get_component(environment, component)
    range_name = _range(request)
    points = series(environment, sc.name, range_name)
    cpu_limit = float(sc.size.cpus) * 100
    memory_limit = sc.size.memory_mb * 1024 * 1024
    last = points[-1] if points else None
    return render(
        request,
        "stacks/metrics.html",
        {
            "environment": environment,
            "project": environment.project,
            "component": sc,
            "range": range_name,
            "ranges": list(RANGES),
            "points": points,
            "last": last,
            "cpu_limit": cpu_limit,
            "memory_limit_mb": sc.size.memory_mb,
            "cpu_line": sparkline([p.cpu for p in points], cpu_limit),
            "memory_line": sparkline([p.memory for p in points], memory_limit),
            "cpu_peak": max((p.cpu_peak for p in points), default=0.0),
            "memory_peak_mb": max((p.memory_peak for p in points), default=0.0) / 1024 / 1024,
        },
    )


@login_required
@require_GET
def component_metrics_data(request: AuthedRequest, environment_id: int, component: str) -> JsonResponse:
    environment = get_environment_for_user(request, environment_id)
    sc = get_component(environment, component)
    range_name = _range(request)
    points = series(environment, sc.name, range_name)
    data: dict[str, Any] = {
        "range": range_name,
        "limits": {"cpu_percent": float(sc.size.cpus) * 100, "memory_bytes": sc.size.memory_mb * 1024 * 1024},
        "t": [int(p.at.timestamp()) for p in points],
        "cpu": [p.cpu for p in points],
        "cpu_peak": [p.cpu_peak for p in points],
        "memory": [p.memory for p in points],
        "memory_peak": [p.memory_peak for p in points],
        "replicas": [p.replicas for p in points],
    }
    return JsonResponse(data)
