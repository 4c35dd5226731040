"""Every write to running stacks: projects, environments, releases and operations.

Views, the API, admin actions and commands call the request functions here; each checks
the actor's role, validates through ``stacks.runtime.spec``, writes one transaction (with its
audit row) and queues at most one Operation, whose Celery task runs ``stacks.runtime.operations``
after commit. Nothing here talks to an engine. Refusals raise ``ServiceError``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, BinaryIO

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from projects.crypto import encrypt
from projects.models import Environment, EnvironmentStatus, Organization, Project, Role
from projects.services import Origin, ServiceError, issue_deploy_key, record_audit_event, require_role
from stacks import tasks
from stacks.backends.edge import EdgeError, normalize_host, normalize_path_prefix
from stacks.catalog import offers
from stacks.models import (
    ACTIVE_OPERATION_STATUSES,
    ComponentVersion,
    Domain,
    KernelVersion,
    Operation,
    OperationKind,
    OperationStatus,
    Region,
    Release,
    StackTemplate,
    Variable,
)
from stacks.runtime import content_store, domains, old_data
from stacks.runtime.content import (
    NO_DEPLOY_KEY,
    ContentError,
    normalize_archive,
    redact_url,
    validate_git_source,
)
from stacks.runtime.policy import stack_policy
from stacks.runtime.spec import (
    ComponentRow,
    Mount,
    SpecError,
    ensure_generated_credentials,
    set_component_rows,
    validate_component_row,
    validate_env_name,
    validate_env_value,
    variables_fingerprint,
)

if TYPE_CHECKING:
    from projects.models import User

PROJECT_NAME_MAX = 100
ENVIRONMENT_NAME_RE = re.compile(r"[a-z0-9-]{1,30}")


def _spec_error(exc: SpecError) -> ServiceError:
    return ServiceError(exc.message, field=exc.field)


def offered_version(component_code: str, track: str = "") -> ComponentVersion | None:
    """The version a new stack gets: the newest offered one (``offers.is_offered``: current
    and published), of ``track`` if given."""
    qs = offers.offered_versions().filter(component__code=component_code)
    if track:
        qs = qs.filter(track=track)
    return qs.first()


def mount_rows(mounts: list[dict[str, Any]]) -> list[Mount]:
    """A template component's stack volumes as a release row carries them."""
    return [{"volume": str(m.get("volume", "")), "path": str(m.get("path", ""))} for m in mounts]


def template_rows(template: StackTemplate) -> list[ComponentRow]:
    rows: list[ComponentRow] = []
    for position, tc in enumerate(template.components.select_related("component", "size")):
        version = offered_version(tc.component.code, tc.track)
        if version is None:
            raise ServiceError(
                f"{template.name} cannot be deployed right now: no published version of {tc.component.name}.",
                status=409,
            )
        rows.append(
            {
                "name": tc.name,
                "component": tc.component.code,
                "version": version.version,
                "size": tc.size.code,
                "replicas": tc.replicas,
                "public": tc.public,
                "env": dict(tc.env),
                "position": position,
            }
        )
        if tc.mounts:  # stack volumes (WordPress's uploads): kept on every later release's rows
            rows[-1]["mounts"] = mount_rows(tc.mounts)
    return rows


def _clean_environment_name(name: str) -> str:
    if not ENVIRONMENT_NAME_RE.fullmatch(str(name)):
        raise ServiceError(
            "Environment names are 1 to 30 lower-case letters, digits and hyphens.", field="environment"
        )
    return str(name)


def _clean_project_name(name: str) -> str:
    name = " ".join(str(name).split())
    if not name:
        raise ServiceError("Give the project a name.", field="name")
    if len(name) > PROJECT_NAME_MAX:
        raise ServiceError(f"Project names are at most {PROJECT_NAME_MAX} characters.", field="name")
    if any(ord(ch) < 32 for ch in name):
        raise ServiceError("Project names cannot contain control characters.", field="name")
    return name


# --- creating -------------------------------------------------------------------------------------
@transaction.atomic
def create_project(
    *,
    organization: Organization,
    actor: User | None,
    name: str,
    region: str,
    template: str | None = None,
    components: list[ComponentRow] | None = None,
    kernel: str | None = None,
    environment: str = "production",
    origin: Origin | None = None,
    system: bool = False,
) -> Environment:
    """A project with its production environment, release 1 and a queued deploy.

    Either ``template`` (a pre-built stack with its sample application) or ``components``
    (an assembled stack: rows of name, component, version, size, replicas, public, env).
    Every version must be offered to new stacks (current and published), and an assembled
    stack must pass the catalog's compatibility rules. A template's sample application is
    only named on the release: the operation produces it in the worker (building the
    WordPress one takes the Docker engine, never a web request).
    ``system`` skips the role check (demo seeding, support tools acting for the hoster).
    """
    if not system:
        if actor is None:
            raise ServiceError("Sign in first.", status=403)
        require_role(actor, organization, Role.DEVELOPER)
    name = _clean_project_name(name)
    environment_name = _clean_environment_name(environment)
    region_obj = Region.objects.filter(code=region, is_active=True).first()
    if region_obj is None:
        raise ServiceError("Choose one of the offered regions.", field="region")
    offered = region_obj.kernel_lines.all()
    kernel_obj = (
        offered.filter(line=kernel).first()
        if kernel
        else offered.filter(is_default=True).first() or offered.order_by("-line").first()
    )
    if kernel_obj is None:
        raise ServiceError(f"{region_obj.name} does not offer that kernel line.", field="kernel")
    template_obj = None
    if template:
        template_obj = StackTemplate.objects.filter(code=template, is_active=True).first()
        if template_obj is None:
            raise ServiceError("Choose one of the pre-built stacks.", field="template")
        rows = template_rows(template_obj)
    elif components:
        rows = [{**r, "position": i} for i, r in enumerate(components)]
    else:
        raise ServiceError("Choose a pre-built stack or at least one component.", field="template")
    if Project.objects.filter(organization=organization, name=name).exists():
        raise ServiceError("A project with this name exists already.", field="name")
    _check_rows(rows)
    _check_new_stack(rows, assembled=template_obj is None)
    stack_policy().check_stack(organization=organization, rows=rows)

    project = Project.objects.create(
        organization=organization, name=name, region=region_obj, created_by=actor
    )
    issue_deploy_key(project=project)  # git over ssh: only with this project's own key
    environment_obj = Environment.objects.create(
        project=project,
        name=environment_name,
        kernel=kernel_obj,
        template=template_obj,
        framework=template_obj.framework if template_obj else None,
    )
    set_component_rows(environment_obj, rows)
    ensure_generated_credentials(environment_obj, rows)
    source, detail = Release.Source.NONE, ""
    if template_obj and template_obj.sample_app:
        # No content yet: the operation makes the sample (stacks.runtime.operations).
        source, detail = Release.Source.TEMPLATE, template_obj.sample_app
    release = _new_release(environment_obj, rows, actor, source=source, detail=detail)
    record_audit_event(
        action="project.create",
        actor=actor,
        organization=organization,
        target=f"project {project.pk}",
        data={"name": name, "region": region_obj.code, "template": template or "", "kernel": kernel_obj.line},
        origin=origin,
    )
    queue_operation(environment_obj, OperationKind.DEPLOY, actor, release=release, origin=origin)
    return environment_obj


def _check_rows(rows: list[ComponentRow]) -> None:
    names = set()
    for row in rows:
        try:
            validate_component_row(row)
        except SpecError as exc:
            raise _spec_error(exc) from exc
        if row["name"] in names:
            raise ServiceError(f"Two components are named {row['name']!r}.", field="name")
        names.add(row["name"])
    if sum(1 for r in rows if r.get("public")) > 1:
        raise ServiceError("Only one component can receive the public route.", field="public")


def _check_new_stack(rows: list[ComponentRow], *, assembled: bool) -> None:
    """What only a new stack must pass (rows already checked by ``_check_rows``): offered
    versions only (running stacks keep their deprecated ones), and for an assembled stack
    the catalog's compatibility rules, the first problem refused with its field."""
    for row in rows:
        version = ComponentVersion.objects.select_related("component").get(
            component__code=row["component"], version=row["version"]
        )
        refusal = offers.new_stack_refusal(version)
        if refusal:
            raise ServiceError(refusal, field="version")
    if assembled:
        problems = offers.compatibility_problems(rows)
        if problems:
            raise ServiceError(problems[0].message, field=problems[0].field)


def with_template_mounts(environment: Environment, rows: list[ComponentRow]) -> list[ComponentRow]:
    """``rows`` with the stack volumes their template gives its components (WordPress's
    uploads) where a row has none: environments made before the template had them get them
    with their next release (nothing was written there before: the folder was read-only)."""
    template = environment.template
    if template is None:
        return rows
    wanted = {tc.name: tc.mounts for tc in template.components.all() if tc.mounts}
    if not wanted or all(row.get("mounts") or row["name"] not in wanted for row in rows):
        return rows
    completed: list[ComponentRow] = []
    for row in rows:
        mounts = wanted.get(row["name"])
        if mounts and not row.get("mounts"):
            row = {**row, "mounts": mount_rows(mounts)}
        completed.append(row)
    return completed


def _new_release(
    environment: Environment,
    rows: list[ComponentRow],
    actor: User | None,
    *,
    source: str | None = None,
    detail: str | None = None,
    content: content_store.Stored | None = None,
    commit: str = "",
    note: str = "",
    keep_content: bool = True,
) -> Release:
    previous = environment.releases.order_by("-number").first()
    base = environment.current_release or previous
    release = Release(
        environment=environment,
        number=(previous.number + 1) if previous else 1,
        spec={"components": with_template_mounts(environment, rows)},
        created_by=actor,
        note=note,
    )
    if content is not None:
        release.source = source or Release.Source.UPLOAD
        release.source_detail = (detail or "")[:300]
        release.content_sha256, release.content_files, release.content_bytes = (
            content.sha256,
            content.files,
            content.size,
        )
        release.commit = commit
    elif base is not None and keep_content:  # the content stays what it was
        release.source, release.source_detail = base.source, base.source_detail
        release.content_sha256, release.content_files = base.content_sha256, base.content_files
        release.content_bytes, release.commit = base.content_bytes, base.commit
        release.build_key = base.build_key  # checked again (and rebuilt if the image changed) when it runs
    elif source is not None:  # content comes later (a git fetch by the operation)
        release.source, release.source_detail = source, (detail or "")[:300]
    release.save()
    return release


def queue_operation(
    environment: Environment,
    kind: str,
    actor: User | None,
    *,
    release: Release | None = None,
    params: dict[str, Any] | None = None,
    origin: Origin | None = None,
) -> Operation:
    """Create the operation (one active per environment) and run it after commit."""

    organization = environment.project.organization
    if actor is not None:  # the hoster's own repairs, clean-ups and support actions are not limited
        limit = settings.STACKPORT_ORG_MAX_ACTIVE_OPERATIONS
        active = Operation.objects.filter(
            environment__project__organization=organization, status__in=ACTIVE_OPERATION_STATUSES
        ).count()
        if active >= limit:
            raise ServiceError(
                f"Your organization already has {active} operations queued or running (at most {limit} "
                "at a time); try again when some have finished.",
                status=429,
            )
    try:
        with transaction.atomic():
            operation = Operation.objects.create(
                environment=environment,
                kind=kind,
                release=release,
                previous_release=environment.current_release,
                params=params or {},
                requested_by=actor,
            )
    except IntegrityError as exc:
        raise ServiceError(
            "Another operation is still running on this environment; try again when it has finished.",
            status=409,
        ) from exc
    record_audit_event(
        action=f"environment.{kind}",
        actor=actor,
        organization=environment.project.organization,
        target=f"environment {environment.pk}",
        data={
            "operation": operation.pk,
            "release": release.number if release else None,
            **{k: v for k, v in (params or {}).items() if not k.endswith("_encrypted")},
        },
        origin=origin,
    )
    transaction.on_commit(lambda: tasks.run_operation_task.delay(operation.pk))
    return operation


def _editable(environment: Environment, actor: User | None, role: str = Role.DEVELOPER) -> None:
    """Role check, then the environment's row locked and re-read: requests are serialised
    and decide on what is current, not on what the caller loaded earlier."""
    Environment.objects.select_for_update().filter(pk=environment.pk).first()
    environment.refresh_from_db()
    if actor is not None:
        require_role(actor, environment.project.organization, role)
        # Support's own actions and system clean-ups pass no actor (stacks.runtime.support, demos).
        project = environment.project
        project.refresh_from_db(fields=["suspended_at", "suspended_reason"])
        if project.suspended_at is not None:
            raise ServiceError(
                f"This project is suspended by support: {project.suspended_reason or 'no reason given'}. "
                "Contact support to resume it.",
                status=423,
            )
    if environment.status in (EnvironmentStatus.DESTROYING, EnvironmentStatus.DESTROYED):
        raise ServiceError("This environment has been destroyed.", status=409)


def _current_rows(environment: Environment) -> list[ComponentRow]:
    release = environment.current_release or environment.releases.order_by("-number").first()
    if release is None:
        raise ServiceError("This environment has nothing deployed yet.", status=409)
    return copy.deepcopy(release.spec.get("components", []))


def _row(rows: list[ComponentRow], component: str) -> ComponentRow:
    for row in rows:
        if row["name"] == component:
            return row
    raise ServiceError(f"This stack has no component {component[:30]!r}.", field="component", status=404)


# --- changing -------------------------------------------------------------------------------------
@transaction.atomic
def scale(
    *,
    environment: Environment,
    actor: User | None,
    component: str,
    replicas: int | None = None,
    size: str | None = None,
    origin: Origin | None = None,
) -> Operation:
    _editable(environment, actor)
    rows = _current_rows(environment)
    row = _row(rows, component)
    if replicas is not None:
        if replicas == 0 and row.get("public"):
            raise ServiceError(
                f"{component} serves the site, so it keeps at least one replica. To take the site "
                "offline, stop the environment instead.",
                field="replicas",
            )
        row["replicas"] = replicas
    if size is not None:
        row["size"] = size
    _check_rows(rows)
    stack_policy().check_stack(
        organization=environment.project.organization, rows=rows, environment=environment
    )
    set_component_rows(environment, rows)
    release = _new_release(environment, rows, actor, note=f"scale {component}")
    return queue_operation(
        environment,
        OperationKind.SCALE,
        actor,
        release=release,
        params={"component": component, "replicas": row["replicas"], "size": row["size"]},
        origin=origin,
    )


@transaction.atomic
def upgrade(
    *,
    environment: Environment,
    actor: User | None,
    component: str,
    version: str,
    origin: Origin | None = None,
) -> Operation:
    """Move one component to another catalog version. A stateful component moves only to
    an upgrade target (``offers.is_upgrade_target``: newer, offered, with a tested way for
    its data, as the pages and the API offer it); a stateless one may move to any version
    that still runs, back included. A stateful component whose catalog entry says its data
    moves by dump-and-restore gets fresh volumes (a new data generation) filled from the
    running version; the old volumes are kept."""
    _editable(environment, actor)
    rows = _current_rows(environment)
    row = _row(rows, component)
    current = ComponentVersion.objects.select_related("component").get(
        component__code=row["component"], version=row["version"]
    )
    target = ComponentVersion.objects.filter(component=current.component, version=version).first()
    if target is None:
        raise ServiceError(f"{current.component.name} has no version {version[:20]!r}.", field="version")
    if target.pk == current.pk:
        raise ServiceError(f"{component} already runs {current.component.name} {version}.", field="version")
    params: dict[str, Any] = {"component": component, "from": current.version, "to": target.version}
    if current.component.stateful:
        # Data moves only forward, to an upgrade target (the rule the pages and the API
        # offer by). Stateless components may also go back (the spec checks the version).
        refusal = offers.upgrade_refusal(current, target, stateful=True)
        if refusal:
            raise ServiceError(refusal, field="version")
        if (target.migration or {}).get("method") == "dump-restore":
            row["data_generation"] = int(row.get("data_generation", 0)) + 1
            params["migrate"] = "dump-restore"
    else:
        refusal = offers.move_refusal(target)
        if refusal:
            raise ServiceError(refusal, field="version")
    row["version"] = target.version
    _check_rows(rows)
    stack_policy().check_stack(
        organization=environment.project.organization, rows=rows, environment=environment
    )
    set_component_rows(environment, rows)
    release = _new_release(environment, rows, actor, note=f"upgrade {component} to {target.version}")
    return queue_operation(
        environment, OperationKind.UPGRADE, actor, release=release, params=params, origin=origin
    )


@transaction.atomic
def rollback(
    *, environment: Environment, actor: User | None, release_number: int, origin: Origin | None = None
) -> Operation:
    _editable(environment, actor)
    target = environment.releases.filter(number=release_number).first()
    if target is None:
        raise ServiceError("There is no such release.", field="release", status=404)
    if environment.current_release_id == target.pk:
        raise ServiceError("This release is the one running.", field="release")
    if target.ran_at is None:
        raise ServiceError(
            f"Release {target.number} never ran (its operation failed), so there is nothing to go "
            "back to. Choose a release that ran.",
            field="release",
        )
    gone = old_data.deleted_generations(environment)
    deleted = [
        row["name"]
        for row in target.spec.get("components", [])
        if (row.get("name"), int(row.get("data_generation", 0))) in gone
    ]
    if deleted:
        raise ServiceError(
            f"Release {target.number} ran on data that was deleted after an upgrade "
            f"({', '.join(deleted)}), so it cannot be rolled back to. Choose a newer release.",
            field="release",
        )
    if target.content_sha256 and not content_store.exists(target.content_sha256):
        raise ServiceError(
            f"The content of release {target.number} was removed to save space (only the last "
            f"{settings.STACKPORT_CONTENT_KEEP_RELEASES} releases keep theirs), so it cannot be rolled "
            "back to. Choose a newer release.",
            field="release",
        )
    rows = copy.deepcopy(target.spec.get("components", []))
    try:
        _check_rows(rows)
    except ServiceError as exc:
        raise ServiceError(f"Release {target.number} cannot run any more: {exc.message}") from exc
    stack_policy().check_stack(
        organization=environment.project.organization, rows=rows, environment=environment
    )
    set_component_rows(environment, rows)
    return queue_operation(
        environment,
        OperationKind.ROLLBACK,
        actor,
        release=target,
        params={"to": target.number},
        origin=origin,
    )


@transaction.atomic
def deploy_content(
    *,
    environment: Environment,
    actor: User | None,
    archive: BinaryIO | None = None,
    filename: str = "",
    git_url: str = "",
    branch: str = "",
    origin: Origin | None = None,
) -> Operation:
    """A new release with new content: an uploaded archive (checked and normalised now)
    or a git repository and branch (fetched by the operation, not in the request)."""
    _editable(environment, actor)
    rows = _current_rows(environment)
    if archive is not None:
        try:
            content = normalize_archive(
                archive,
                filename,
                max_bytes=settings.STACKPORT_UPLOAD_MAX_BYTES,
                max_files=settings.STACKPORT_CONTENT_MAX_FILES,
                max_unpacked_bytes=settings.STACKPORT_CONTENT_MAX_BYTES,
                workdir=content_store.workdir(),
            )
        except ContentError as exc:
            raise ServiceError(exc.message, field="archive") from exc
        stored = content_store.save(content.path)
        release = _new_release(
            environment, rows, actor, source=Release.Source.UPLOAD, detail=filename, content=stored
        )
        return queue_operation(environment, OperationKind.DEPLOY, actor, release=release, origin=origin)
    if git_url:
        try:
            scheme = validate_git_source(git_url, branch, trusted_hosts=settings.STACKPORT_GIT_TRUSTED_HOSTS)
        except ContentError as exc:
            raise ServiceError(exc.message, field=exc.field) from exc
        if scheme == "ssh" and not environment.project.deploy_key_public:
            raise ServiceError(NO_DEPLOY_KEY, field="git_url")
        # No content yet: the operation fetches it (and a resumed one knows it has).
        release = _new_release(
            environment,
            rows,
            actor,
            source=Release.Source.GIT,
            detail=f"{redact_url(git_url)} {branch}",
            note="git",
            keep_content=False,
        )
        return queue_operation(
            environment,
            OperationKind.DEPLOY,
            actor,
            release=release,
            # The address may carry credentials: stored encrypted, shown redacted.
            params={
                "git_url": redact_url(git_url),
                "git_url_encrypted": encrypt(git_url).decode(),
                "branch": branch,
            },
            origin=origin,
        )
    raise ServiceError("Upload an archive or give a git repository.", field="archive")


@transaction.atomic
def set_running(
    *, environment: Environment, actor: User | None, running: bool, origin: Origin | None = None
) -> Operation:
    _editable(environment, actor)
    if environment.current_release is None:
        raise ServiceError("This environment has nothing deployed yet.", status=409)
    if running:
        rows = _current_rows(environment)
        stack_policy().check_stack(
            organization=environment.project.organization, rows=rows, environment=environment
        )
    Environment.objects.filter(pk=environment.pk).update(desired_running=running)
    environment.desired_running = running
    kind = OperationKind.START if running else OperationKind.STOP
    return queue_operation(environment, kind, actor, release=environment.current_release, origin=origin)


@transaction.atomic
def redeploy(*, environment: Environment, actor: User | None, origin: Origin | None = None) -> Operation:
    """Apply the running release again: changed variables reach the containers. Stateless
    components are replaced blue/green (the site keeps answering); a stateful component
    whose settings changed restarts in place."""
    _editable(environment, actor)
    release = environment.current_release
    if release is None:
        raise ServiceError("This environment has nothing deployed yet.", status=409)
    if not environment.desired_running:
        raise ServiceError("This environment is stopped; start it to apply the changes.", status=409)
    rows = release.spec.get("components", [])
    if with_template_mounts(environment, rows) != rows:  # an older stack: its volumes come now
        release = _new_release(environment, rows, actor, note="the template's stack volumes")
    return queue_operation(
        environment,
        OperationKind.DEPLOY,
        actor,
        release=release,
        params={"reason": "redeploy"},
        origin=origin,
    )


def pending_variables(environment: Environment) -> bool:
    """Have the variables changed since what runs was applied? (They reach the containers
    with the next deploy; the page offers a redeploy.)"""

    if environment.current_release_id is None:
        return False
    applied = (
        Operation.objects.filter(
            environment=environment, status=OperationStatus.SUCCEEDED, params__has_key="variables"
        )
        .order_by("-finished_at", "-id")
        .values_list("params", flat=True)
        .first()
    )
    if applied is None:
        return False
    return bool(applied["variables"] != variables_fingerprint(environment))


@transaction.atomic
def destroy(
    *, environment: Environment, actor: User | None, confirmation: str, origin: Origin | None = None
) -> Operation:
    """Remove everything the environment runs, its data included. The customer types the
    project's name to confirm."""
    _editable(environment, actor, Role.ADMIN)
    if confirmation.strip() != environment.project.name:
        raise ServiceError("Type the project's name exactly to confirm.", field="confirmation")
    operation = queue_operation(environment, OperationKind.DESTROY, actor, origin=origin)
    Environment.objects.filter(pk=environment.pk).update(status=EnvironmentStatus.DESTROYING)
    return operation


def destroy_unconfirmed(
    *, environment: Environment, reason: str, origin: Origin | None = None
) -> Operation | None:
    """The hoster's own removal (an expired demo, a cancelled account): the destroy operation
    with no actor and no typed confirmation. None when the environment is gone already;
    ServiceError (409) while another operation runs."""
    with transaction.atomic():
        locked = (
            Environment.objects.select_for_update(of=("self",))
            .select_related("project__organization")
            .get(pk=environment.pk)
        )
        if locked.status == EnvironmentStatus.DESTROYED:
            return None
        operation = queue_operation(
            locked, OperationKind.DESTROY, None, params={"reason": reason}, origin=origin
        )
        Environment.objects.filter(pk=locked.pk).update(status=EnvironmentStatus.DESTROYING)
        return operation


def requeue(operation: Operation) -> None:
    """Run an operation again (a lost worker); the operation itself is idempotent."""

    if operation.status in (OperationStatus.QUEUED, OperationStatus.RUNNING):
        tasks.run_operation_task.delay(operation.pk)


def active_operations(environments: Iterable[Environment]) -> dict[int, Operation]:
    ops = Operation.objects.filter(
        environment__in=list(environments), status__in=[OperationStatus.QUEUED, OperationStatus.RUNNING]
    )
    return {op.environment_id: op for op in ops}


def kernel_lines() -> list[KernelVersion]:
    return list(KernelVersion.objects.all())


# --- variables and domains -------------------------------------------------------------------------
@transaction.atomic
def set_variable(
    *,
    environment: Environment,
    actor: User | None,
    name: str,
    value: str,
    secret: bool = False,
    component: str = "",
    origin: Origin | None = None,
) -> None:
    """Create or change a variable; it reaches the containers with the next deploy.
    Secrets are stored encrypted and never shown again (the audit row has no value)."""

    _editable(environment, actor)
    try:
        validate_env_name(name)
        validate_env_value(value)
    except SpecError as exc:
        raise _spec_error(exc) from exc
    if component and not environment.components.filter(name=component).exists():
        raise ServiceError("This stack has no such component.", field="component")
    Variable.objects.update_or_create(
        environment=environment,
        component=component,
        name=name,
        defaults={
            "value": "" if secret else value,
            "encrypted_value": encrypt(value) if secret else b"",
            "is_secret": secret,
            "generated": False,
            "updated_at": timezone.now(),
        },
    )
    record_audit_event(
        action="secret.set" if secret else "variable.set",
        actor=actor,
        organization=environment.project.organization,
        target=f"environment {environment.pk}",
        data={"name": name, "component": component},
        origin=origin,
    )


@transaction.atomic
def delete_variable(
    *,
    environment: Environment,
    actor: User | None,
    name: str,
    component: str = "",
    origin: Origin | None = None,
) -> None:
    _editable(environment, actor)
    deleted, _ = Variable.objects.filter(
        environment=environment, component=component, name=name, generated=False
    ).delete()
    if not deleted:
        raise ServiceError("There is no such variable.", status=404)
    record_audit_event(
        action="variable.delete",
        actor=actor,
        organization=environment.project.organization,
        target=f"environment {environment.pk}",
        data={"name": name, "component": component},
        origin=origin,
    )


@transaction.atomic
def add_domain(
    *,
    environment: Environment,
    actor: User | None,
    hostname: str,
    path_prefix: str = "",
    strip_prefix: bool = False,
    origin: Origin | None = None,
) -> Any:
    """A customer domain (and optional path prefix) for the environment. The host name belongs
    to one organization, which proves control (``stacks.runtime.domains``): until then the
    domain is pending; once verified, the edge gets it right after commit. ``strip_prefix``:
    the app gets the path without the prefix (refused without a prefix)."""

    _editable(environment, actor)
    domains.refuse_unclaimable(hostname)
    # Our own words, never the library's message with the value echoed back.
    try:
        host = normalize_host(hostname)
    except EdgeError as exc:
        raise ServiceError(
            "This is not a domain name we can serve. Use a full name such as shop.example.com: "
            "letters, digits and hyphens, no spaces, ports, wildcards or IP addresses.",
            field="hostname",
        ) from exc
    try:
        prefix = normalize_path_prefix(path_prefix) if path_prefix else ""
    except EdgeError as exc:
        raise ServiceError(
            "A path prefix starts with / and holds letters, digits, -, _, . and / only (for example /shop).",
            field="path_prefix",
        ) from exc
    if strip_prefix and not prefix:
        raise ServiceError("Only a route with a path prefix can strip it.", field="strip_prefix")
    domains.refuse_unclaimable(hostname, host)
    organization = environment.project.organization
    claim = domains.claim_for(organization=organization, hostname=host)
    if Domain.objects.filter(claim=claim, path_prefix=prefix).exists():
        raise ServiceError("This domain is already in use.", field="hostname", status=409)
    stack_policy().check_stack(organization=organization, rows=None, environment=environment, extra_domains=1)
    domain = Domain.objects.create(
        environment=environment,
        claim=claim,
        hostname=host,
        path_prefix=prefix,
        strip_prefix=bool(strip_prefix),
    )
    record_audit_event(
        action="domain.add",
        actor=actor,
        organization=environment.project.organization,
        target=f"environment {environment.pk}",
        data={
            "hostname": host,
            "path_prefix": prefix,
            "strip_prefix": bool(strip_prefix),
            "verified": claim.verified_at is not None,
        },
        origin=origin,
    )
    if claim.verified_at is not None:
        transaction.on_commit(lambda: _routes_later(environment.pk))
    return domain


@transaction.atomic
def remove_domain(*, domain: Any, actor: User | None, origin: Origin | None = None) -> None:
    environment = domain.environment
    _editable(environment, actor)

    data = {"hostname": domain.hostname, "path_prefix": domain.path_prefix}
    domain.delete()
    domains.release_if_unused(domain.claim_id)
    record_audit_event(
        action="domain.remove",
        actor=actor,
        organization=environment.project.organization,
        target=f"environment {environment.pk}",
        data=data,
        origin=origin,
    )
    transaction.on_commit(lambda: _routes_later(environment.pk))


def _routes_later(environment_id: int) -> None:
    tasks.sync_routes_task.delay(environment_id)
