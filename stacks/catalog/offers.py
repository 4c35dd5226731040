"""What the catalog offers a customer, read-only: the versions a new stack or an upgrade
can use, and whether an assembled stack goes together (the compatibility rules).

Each rule is written here once. Pages, the wizard and the API read them to show what is
offered; the services (``stacks.runtime.lifecycle``) apply the same functions to refuse
what is not: a new stack gets *current*, published versions only (``is_offered``); a
component moves on to a version ``is_upgrade_target`` allows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from stacks.models import (
    OFFERED_STATUSES,
    RUNNABLE_STATUSES,
    CompatibilityRule,
    Component,
    ComponentVersion,
    Framework,
    StackComponent,
    VersionStatus,
    placed_hosts,
)


# --- versions for new stacks ---------------------------------------------------------------------
def is_offered(cv: ComponentVersion) -> bool:
    """May a new stack (or an upgrade) get this version: a *current* one whose image is
    published (has a digest). Deprecated versions keep running where they run, but are
    offered to nobody."""
    return cv.status in OFFERED_STATUSES and bool(cv.digest)


def offered_versions() -> QuerySet[ComponentVersion]:
    """``is_offered`` as a query: the offered versions, newest first."""
    return (
        ComponentVersion.objects.filter(status__in=OFFERED_STATUSES)
        .exclude(digest="")
        .order_by("-position", "-id")
    )


def new_stack_refusal(cv: ComponentVersion) -> str | None:
    """Why a new stack cannot use ``cv`` (the message names the component and version),
    or None when it can. The wizard and ``lifecycle.create_project`` both ask this."""
    if is_offered(cv):
        return None
    message = (
        f"{cv.component.name} {cv.version} is {cv.get_status_display().lower()}: new stacks get "
        f"current versions only. Choose a current version of {cv.component.name}."
    )
    return message + eol_notice(cv)


def eol_notice(cv: ComponentVersion) -> str:
    """The deadline of a version that is going away, as a sentence (with a leading space),
    or "" when it has none."""
    if cv.eol is None:
        return ""
    if cv.status == VersionStatus.END_OF_LIFE or cv.eol <= timezone.localdate():
        return f" Its end of life was {cv.eol:%Y-%m-%d}."
    return f" Its end of life is {cv.eol:%Y-%m-%d}: stacks on it should upgrade before then."


def pickable_versions() -> dict[str, list[ComponentVersion]]:
    """Versions a new stack may use (``is_offered``), by component code, newest first."""
    versions: dict[str, list[ComponentVersion]] = {}
    qs = (
        offered_versions()
        .select_related("component")
        .order_by("component__position", "component__code", "-position", "-id")
    )
    for cv in qs:
        versions.setdefault(cv.component.code, []).append(cv)
    return versions


# --- upgrades ------------------------------------------------------------------------------------
# Why a version is not an upgrade target (see ``upgrade_refusal`` for the words).
NOT_NEWER, NOT_OFFERED, NO_MIGRATION = "not-newer", "not-offered", "no-migration"


def upgrade_blocker(running: ComponentVersion, candidate: ComponentVersion, *, stateful: bool) -> str | None:
    """The one upgrade rule; None when ``candidate`` is a target for a component running
    ``running``: another version of the same component, newer (higher position), offered
    (``is_offered``) and, for a stateful component, one whose data has a tested way there
    (the catalog's ``migration.from`` lists the running version).

    Pure: reads only the two versions' own fields (no query), so the dashboard can apply it
    to versions it loaded once."""
    if candidate.component_id != running.component_id or candidate.position <= running.position:
        return NOT_NEWER
    if not is_offered(candidate):
        return NOT_OFFERED
    if stateful and running.version not in (candidate.migration or {}).get("from", []):
        return NO_MIGRATION
    return None


def is_upgrade_target(running: ComponentVersion, candidate: ComponentVersion, *, stateful: bool) -> bool:
    """Can a component running ``running`` upgrade to ``candidate`` (``upgrade_blocker``)."""
    return upgrade_blocker(running, candidate, stateful=stateful) is None


def upgrade_refusal(running: ComponentVersion, candidate: ComponentVersion, *, stateful: bool) -> str | None:
    """``upgrade_blocker`` in words, for the service that refuses the move."""
    blocker = upgrade_blocker(running, candidate, stateful=stateful)
    if blocker is None:
        return None
    name = running.component.name
    if blocker == NOT_NEWER:
        if stateful:
            return (
                f"{name} data cannot be moved to an older version; roll back to a release that ran "
                "it instead."
            )
        return f"{name} {candidate.version} is not newer than {running.version}."
    if blocker == NOT_OFFERED:
        return f"{name} {candidate.version} is not offered ({candidate.get_status_display().lower()})."
    return f"There is no tested way to move the data of {name} {running.version} to {candidate.version}."


def move_refusal(candidate: ComponentVersion) -> str | None:
    """Why a stateless component cannot move (up or back) onto ``candidate``: only versions
    that still run and have an image (verified, current, deprecated); a stack that already
    runs a version keeps it whatever its status (``spec.validate_component_row``)."""
    if candidate.status in RUNNABLE_STATUSES and candidate.digest:
        return None
    return (
        f"{candidate.component.name} {candidate.version} is "
        f"{candidate.get_status_display().lower()}: a stack cannot move onto it." + eol_notice(candidate)
    )


def upgrades_for(components: Iterable[StackComponent]) -> dict[str, list[ComponentVersion]]:
    """The versions each component can upgrade to (``is_upgrade_target``), newest first, by
    component name; one query for all of them."""
    components = list(components)
    candidates: dict[int, list[ComponentVersion]] = {}
    for cv in offered_versions().filter(component_id__in={c.component_id for c in components}):
        candidates.setdefault(cv.component_id, []).append(cv)
    return {
        sc.name: [
            cv
            for cv in candidates.get(sc.component_id, [])
            if is_upgrade_target(sc.version, cv, stateful=sc.component.stateful)
        ]
        for sc in components
    }


# --- compatibility -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """A reason an assembled stack does not go together: ``row`` is the index of the
    component row it belongs to (None: the stack as a whole), ``field`` the form field."""

    message: str
    row: int | None = None
    field: str | None = None


def compatibility_problems(
    rows: Sequence[Mapping[str, Any]], framework: Framework | None = None
) -> list[Problem]:
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
    """The hosts the environment's containers live on, home first (its ``Placement``)."""
    return placed_hosts(environment)
