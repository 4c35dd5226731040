"""What the catalog offers a customer, read-only: the versions a new stack or an upgrade
can use, and whether an assembled stack goes together (the compatibility rules).

Pages and the wizard read these; the services (``stacks.runtime.lifecycle``) stay the gate that
refuses what is not runnable.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from stacks.models import (
    CompatibilityRule,
    Component,
    ComponentVersion,
    Framework,
    StackComponent,
    VersionStatus,
)

# What the wizard lets a customer pick for a new stack: the current versions, and the
# deprecated ones (still runnable, shown with their end of life).
PICKABLE_STATUSES = (VersionStatus.CURRENT, VersionStatus.DEPRECATED)


def pickable_versions() -> dict[str, list[ComponentVersion]]:
    """Published versions a new stack may use, by component code, newest first."""
    versions: dict[str, list[ComponentVersion]] = {}
    qs = (
        ComponentVersion.objects.filter(status__in=PICKABLE_STATUSES)
        .exclude(digest="")
        .select_related("component")
        .order_by("component__position", "component__code", "-position", "-id")
    )
    for cv in qs:
        versions.setdefault(cv.component.code, []).append(cv)
    return versions


def upgrades_for(components: Iterable[StackComponent]) -> dict[str, list[ComponentVersion]]:
    """Newer offered versions each component could move to (one query), newest first.

    A stateful component only gets the versions its data has a tested way to (the
    catalog's ``migration.from``), as ``stacks.runtime.lifecycle.upgrade`` demands."""
    components = list(components)
    offered = (
        ComponentVersion.objects.filter(
            component_id__in={c.component_id for c in components}, status=VersionStatus.CURRENT
        )
        .exclude(digest="")
        .order_by("-position", "-id")
    )
    by_component: dict[int, list[ComponentVersion]] = {}
    for cv in offered:
        by_component.setdefault(cv.component_id, []).append(cv)
    result: dict[str, list[ComponentVersion]] = {}
    for sc in components:
        newer = [cv for cv in by_component.get(sc.component_id, []) if cv.position > sc.version.position]
        if sc.component.stateful:
            newer = [cv for cv in newer if sc.version.version in (cv.migration or {}).get("from", [])]
        result[sc.name] = newer
    return result


@dataclass(frozen=True)
class Problem:
    """A reason an assembled stack does not go together: ``row`` is the index of the
    component row it belongs to (None: the stack as a whole), ``field`` the form field."""

    message: str
    row: int | None = None
    field: str | None = None


def compatibility_problems(rows: list[dict[str, Any]], framework: Framework | None = None) -> list[Problem]:
    """The catalog's rules applied to component rows (codes under ``component``):

    - ``requires``: a component needs at least one of the others in the same stack;
    - ``works_with``: among the kinds of components it names, only those go with it;
    - a framework with a runtime needs that runtime in the stack.
    """
    codes = [str(r.get("component") or "") for r in rows]
    known = {c.code: c for c in Component.objects.filter(code__in=set(codes))}
    rules = CompatibilityRule.objects.filter(component__code__in=set(codes)).prefetch_related("others")
    problems: list[Problem] = []
    present = {code for code in codes if code in known}
    for rule in rules:
        others = list(rule.others.all())
        names = ", ".join(o.name for o in others)
        for index, code in enumerate(codes):
            if code != rule.component.code:
                continue
            if rule.kind == CompatibilityRule.Kind.REQUIRES and not present & {o.code for o in others}:
                note = f"{rule.note} " if rule.note else ""
                problems.append(Problem(f"{note}Add one of: {names}.", index, "component"))
            if rule.kind == CompatibilityRule.Kind.WORKS_WITH:
                kinds = {o.kind for o in others}
                for other_code in present - {o.code for o in others} - {code}:
                    other = known[other_code]
                    if other.kind in kinds:
                        problems.append(
                            Problem(
                                f"{rule.component.name} works with {names}, not with {other.name}.",
                                index,
                                "component",
                            )
                        )
    if framework is not None and framework.runtime_id:
        runtime = Component.objects.filter(pk=framework.runtime_id).first()
        if runtime is not None and runtime.code not in present:
            problems.append(
                Problem(
                    f"The {framework.name} framework needs a {runtime.name} component: add one.",
                    None,
                    "framework",
                )
            )
    return problems


def hosts_of(environment: Any) -> list[str]:
    """The hosts the environment's containers live on, from the backend's bookkeeping
    (``backend_state``: its home ``host``, and ``hosts`` where replicas spread)."""
    state = environment.backend_state or {}
    names = [str(h) for h in state.get("hosts") or [] if h]
    if state.get("host") and str(state["host"]) not in names:
        names.insert(0, str(state["host"]))
    return names
