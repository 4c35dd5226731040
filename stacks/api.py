"""The JSON API's stacks part: the catalog, projects, environments and their operations.

Every object comes through the scoping helpers of ``projects.api`` (404 for someone else's,
403 for a too-low role); every change is one call of the same ``stacks.runtime.lifecycle`` function
the pages use. Changes answer 202 with the queued operation; poll ``/operations/{id}``.
Variable values of secrets are never returned.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from django.db.models import Prefetch, QuerySet
from django.http import Http404, HttpRequest, StreamingHttpResponse
from django.utils import timezone
from ninja import File, Form, Query, Router, Schema, Status
from ninja.files import UploadedFile
from ninja.pagination import LimitOffsetPagination, paginate
from pydantic import Field

from projects.api import (
    PATH_LOOKUPS,
    actor,
    origin,
    scoped_environment,
    scoped_membership,
    scoped_project,
    within_token,
)
from projects.api import visible_organizations as _visible_organizations
from projects.models import Environment, EnvironmentStatus, Project, Role
from projects.services import ServiceError, rotate_deploy_key
from stacks.access import get_backup_for_user, get_operation_for_user
from stacks.backends.base import BackendError
from stacks.catalog import offers
from stacks.models import (
    ACTIVE_OPERATION_STATUSES,
    Backup,
    Component,
    ComponentVersion,
    Domain,
    EdgeCertificate,
    Framework,
    Operation,
    Region,
    Release,
    ResourceSampleRow,
    Size,
    StackComponent,
    StackTemplate,
    StackTemplateComponent,
    Variable,
    VersionStatus,
)
from stacks.runtime import backups, domains, lifecycle, old_data, operations
from stacks.runtime.spec import ComponentRow

catalog_router = Router(tags=["catalog"])
router = Router(tags=["projects"])

LOG_LINES_MAX = 2000


def scoped_operation(request: HttpRequest, operation_id: int) -> Any:
    operation = get_operation_for_user(request, operation_id)
    within_token(request, operation.environment.project.organization_id)
    return operation


PATH_LOOKUPS["operation_id"] = scoped_operation
PATH_LOOKUPS["backup_id"] = lambda request, backup_id: scoped_backup(request, backup_id)


# --- schemas -------------------------------------------------------------------------------------
class KernelOut(Schema):
    line: str
    name: str
    eol: date | None
    is_default: bool


class RegionOut(Schema):
    code: str
    name: str
    kernel_lines: list[KernelOut]


class FrameworkOut(Schema):
    code: str
    name: str
    description: str
    runtime: str | None


class SizeOut(Schema):
    code: str
    name: str
    cpus: float
    memory_mb: int


class VersionOut(Schema):
    version: str
    track: str
    status: str
    offered: bool
    released: date | None
    eol: date | None
    end_of_life: bool
    eol_soon: bool


class ComponentOut(Schema):
    code: str
    name: str
    kind: str
    description: str
    stateful: bool
    default_size: str
    sizes: list[str]
    versions: list[VersionOut]


class TemplateComponentOut(Schema):
    name: str
    component: str
    track: str
    size: str
    replicas: int
    public: bool


class TemplateOut(Schema):
    code: str
    name: str
    description: str
    framework: str | None
    components: list[TemplateComponentOut]


class ComponentRowIn(Schema):
    name: str = Field(..., max_length=30, description="Service name others reach it by, e.g. web")
    component: str = Field(..., max_length=40, description="Catalog component code, e.g. nginx")
    version: str | None = Field(None, max_length=32, description="Default: the newest offered")
    size: str | None = Field(None, max_length=16, description="Default: the component's default size")
    replicas: int = 1
    public: bool = False
    env: dict[str, str] = {}


class ProjectIn(Schema):
    organization: int
    name: str = Field(..., max_length=200)
    region: str = Field(..., max_length=64)
    template: str | None = Field(
        None, max_length=64, description="A pre-built stack (see /catalog/templates)"
    )
    components: list[ComponentRowIn] | None = Field(None, description="Or an assembled stack")
    kernel: str | None = Field(None, max_length=16, description="Default: the region's default kernel line")
    environment: str | None = Field(None, max_length=64, description="Default: production")


class EnvironmentBrief(Schema):
    id: int
    name: str
    status: str
    url: str


class ProjectOut(Schema):
    id: int
    name: str
    organization: int
    region: str
    created_at: datetime
    suspended: bool
    environments: list[EnvironmentBrief]
    deploy_key: str = Field("", description="The public half of the project's ssh deploy key")


class DeployKeyOut(Schema):
    public_key: str = Field(..., description="Add it to your git host (read access is enough)")
    created_at: datetime | None


class DeployKeyIn(Schema):
    replace: bool = Field(
        False, description="Must be true when the project has a key: the old key stops working at once"
    )


class OperationBrief(Schema):
    id: int
    kind: str
    status: str
    progress: int
    created_at: datetime
    finished_at: datetime | None


class CreatedOut(Schema):
    project: ProjectOut
    environment: int
    operation: OperationBrief


class StackComponentOut(Schema):
    name: str
    component: str
    component_name: str
    kind: str
    version: str
    version_status: str
    eol: date | None
    end_of_life: bool
    eol_soon: bool
    upgrade_available: bool
    upgrades: list[str]
    size: str
    replicas: int
    public: bool


class EnvironmentOut(Schema):
    id: int
    name: str
    project: int
    project_name: str
    organization: int
    status: str
    status_detail: str
    desired_running: bool
    region: str
    kernel: str
    template: str | None
    framework: str | None
    url: str
    release: int | None
    active_operation: int | None
    components: list[StackComponentOut]


class OperationOut(OperationBrief):
    environment: int
    release: int | None
    params: dict[str, Any]
    steps: list[dict[str, Any]]
    log: str
    error: str
    started_at: datetime | None


class ScaleIn(Schema):
    component: str = Field(..., max_length=30)
    replicas: int | None = None
    size: str | None = Field(None, max_length=16)


class UpgradeIn(Schema):
    component: str = Field(..., max_length=30)
    version: str = Field(..., max_length=32)


class RollbackIn(Schema):
    release: int


class DestroyIn(Schema):
    confirmation: str = Field(..., max_length=200, description="The project's name, exactly")


class ReleaseOut(Schema):
    number: int
    source: str
    source_detail: str
    commit: str
    note: str
    content_files: int
    content_bytes: int
    components: list[dict[str, Any]]
    created_at: datetime
    current: bool
    ran: bool = Field(description="It ran to the end of its operation: a rollback target")


class DomainIn(Schema):
    hostname: str = Field(..., max_length=300)
    path_prefix: str = Field("", max_length=300)
    strip_prefix: bool = Field(
        False, description="With a path prefix: the app gets the path without it (/shop/cart as /cart)"
    )


class DomainHstsIn(Schema):
    hsts: bool = Field(description="Send Strict-Transport-Security over HTTPS (browsers then refuse HTTP)")


class CertificateOut(Schema):
    status: str = Field(description="pending: being issued; active: served over HTTPS; failed: not issued")
    issuer: str
    not_after: datetime | None = Field(description="When the served certificate expires")
    error: str = Field(description="Why it is not issued, in plain words ('' when it is)")
    checked_at: datetime | None


class DomainRecord(Schema):
    type: str = Field("TXT", description="Always TXT")
    name: str = Field(description="The record's name: _stackport-challenge.<host name>")
    value: str = Field(description="The record's value: the organization's token for this host name")


class DomainOut(Schema):
    id: int
    hostname: str
    path_prefix: str
    strip_prefix: bool
    created_at: datetime
    status: str = Field(
        description="pending: not routed until the TXT record is seen; verified: routed by the edge"
    )
    verified_at: datetime | None
    record: DomainRecord = Field(description="The DNS record that proves control of the host name")
    last_checked_at: datetime | None
    check_error: str = Field(description="Why the last check did not verify the name ('' when it did)")
    http_check_url: str = Field(
        description="The other proof: the edge answers the token here once the name points at it"
    )
    hsts: bool
    certificate: CertificateOut | None = Field(description="HTTPS of the host name (None: not checked yet)")


class VariableIn(Schema):
    name: str = Field(..., max_length=100)
    value: str = Field(..., max_length=65536)
    secret: bool = False
    component: str = Field("", max_length=30, description="Empty: every application component")


class VariableOut(Schema):
    name: str
    component: str
    secret: bool
    generated: bool
    value: str | None = Field(description="Never given for secrets")
    updated_at: datetime


class GitIn(Schema):
    url: str = Field(..., max_length=500)
    branch: str = Field("main", max_length=200)


class LogsOut(Schema):
    component: str
    lines: list[str]


class SampleOut(Schema):
    component: str
    replica: int
    taken_at: datetime
    cpu_percent: float
    memory_bytes: int


# --- catalog -------------------------------------------------------------------------------------
def _version_out(v: ComponentVersion) -> dict[str, Any]:
    return {
        "version": v.version,
        "track": v.track,
        "status": v.status,
        "offered": offers.is_offered(v),
        "released": v.released,
        "eol": v.eol,
        "end_of_life": v.is_end_of_life,
        "eol_soon": v.eol_soon,
    }


@catalog_router.get("/catalog/regions", response=list[RegionOut], summary="Regions and their kernel lines")
def list_regions(request: HttpRequest) -> QuerySet[Region]:
    return Region.objects.filter(is_active=True).prefetch_related("kernel_lines")


@catalog_router.get("/catalog/frameworks", response=list[FrameworkOut], summary="Language runtimes")
def list_frameworks(request: HttpRequest) -> list[dict[str, Any]]:
    return [
        {
            "code": f.code,
            "name": f.name,
            "description": f.description,
            "runtime": f.runtime.code if f.runtime else None,
        }
        for f in Framework.objects.select_related("runtime")
    ]


@catalog_router.get("/catalog/sizes", response=list[SizeOut], summary="Resource sizes")
def list_sizes(request: HttpRequest) -> QuerySet[Size]:
    return Size.objects.all()


@catalog_router.get(
    "/catalog/components", response=list[ComponentOut], summary="Components with their versions"
)
def list_components(request: HttpRequest) -> list[dict[str, Any]]:
    versions = ComponentVersion.objects.exclude(status=VersionStatus.CANDIDATE).order_by(
        "position", "version"
    )
    components = Component.objects.select_related("default_size").prefetch_related(
        "sizes", Prefetch("versions", queryset=versions)
    )
    return [
        {
            "code": c.code,
            "name": c.name,
            "kind": c.kind,
            "description": c.description,
            "stateful": c.stateful,
            "default_size": c.default_size.code,
            "sizes": [s.code for s in c.sizes.all()],
            "versions": [_version_out(v) for v in c.versions.all()],
        }
        for c in components
    ]


@catalog_router.get("/catalog/templates", response=list[TemplateOut], summary="Pre-built stacks")
def list_templates(request: HttpRequest) -> list[dict[str, Any]]:
    templates = (
        StackTemplate.objects.filter(is_active=True)
        .select_related("framework")
        .prefetch_related(
            Prefetch(
                "components", queryset=StackTemplateComponent.objects.select_related("component", "size")
            )
        )
    )
    return [
        {
            "code": t.code,
            "name": t.name,
            "description": t.description,
            "framework": t.framework.code if t.framework else None,
            "components": [
                {
                    "name": tc.name,
                    "component": tc.component.code,
                    "track": tc.track,
                    "size": tc.size.code,
                    "replicas": tc.replicas,
                    "public": tc.public,
                }
                for tc in t.components.all()
            ],
        }
        for t in templates
    ]


# --- projects ------------------------------------------------------------------------------------
def _project_out(project: Project) -> dict[str, Any]:
    return {
        "id": project.pk,
        "name": project.name,
        "organization": project.organization_id,
        "region": project.region.code,
        "created_at": project.created_at,
        "suspended": project.suspended_at is not None,
        "deploy_key": project.deploy_key_public,
        "environments": [
            {"id": e.pk, "name": e.name, "status": e.status, "url": e.public_url}
            for e in project.environments.all()
        ],
    }


def _operation_brief(op: Operation) -> dict[str, Any]:
    return {
        "id": op.pk,
        "kind": op.kind,
        "status": op.status,
        "progress": op.progress,
        "created_at": op.created_at,
        "finished_at": op.finished_at,
    }


def _rows(rows: list[ComponentRowIn]) -> list[ComponentRow]:
    """The assembled stack as the service takes it; version and size default to the newest
    offered version and the component's default size."""
    result: list[ComponentRow] = []
    for row in rows:
        version, size = row.version, row.size
        if not version:
            offered = lifecycle.offered_version(row.component)
            if offered is None:
                raise ServiceError(f"Unknown component {row.component[:40]!r}.", field="component")
            version = offered.version
        if not size:
            component = Component.objects.filter(code=row.component).select_related("default_size").first()
            size = component.default_size.code if component else ""
        result.append(
            {
                "name": row.name,
                "component": row.component,
                "version": version,
                "size": size,
                "replicas": row.replicas,
                "public": row.public,
                "env": dict(row.env),
            }
        )
    return result


@router.get("/projects", response=list[ProjectOut], summary="Projects you can see")
def list_projects(request: HttpRequest, organization: int | None = None) -> list[dict[str, Any]]:
    projects = Project.objects.filter(organization__in=_visible_organizations(request))
    if organization is not None:
        projects = projects.filter(organization_id=organization)
    projects = projects.select_related("region").prefetch_related(
        Prefetch("environments", queryset=Environment.objects.exclude(status=EnvironmentStatus.DESTROYED))
    )
    return [_project_out(p) for p in projects.order_by("organization_id", "name", "id")]


@router.post("/projects", response={202: CreatedOut}, summary="Create a project (queues its deploy)")
def create_project(request: HttpRequest, payload: ProjectIn) -> Status:
    membership = scoped_membership(request, payload.organization, Role.DEVELOPER)
    extra: dict[str, Any] = {}
    if payload.environment is not None:
        extra["environment"] = payload.environment
    environment = lifecycle.create_project(
        organization=membership.organization,
        actor=actor(request),
        name=payload.name,
        region=payload.region,
        template=payload.template,
        components=_rows(payload.components) if payload.components else None,
        kernel=payload.kernel,
        origin=origin(request),
        **extra,
    )
    project = Project.objects.select_related("region").get(pk=environment.project_id)
    return Status(
        202,
        {
            "project": _project_out(project),
            "environment": environment.pk,
            "operation": _operation_brief(environment.operations.get()),
        },
    )


@router.get("/projects/{int:project_id}", response=ProjectOut, summary="One project")
def get_project(request: HttpRequest, project_id: int) -> dict[str, Any]:
    return _project_out(scoped_project(request, project_id))


@router.get("/projects/{int:project_id}/deploy-key", response=DeployKeyOut, summary="The ssh deploy key")
def get_deploy_key(request: HttpRequest, project_id: int) -> dict[str, Any]:
    project = scoped_project(request, project_id)
    if not project.deploy_key_public:
        raise ServiceError("This project has no deploy key yet.", status=404)
    return {"public_key": project.deploy_key_public, "created_at": project.deploy_key_created_at}


@router.post(
    "/projects/{int:project_id}/deploy-key",
    response=DeployKeyOut,
    summary="Generate or replace the ssh deploy key (admins)",
)
def new_deploy_key(request: HttpRequest, project_id: int, payload: DeployKeyIn) -> dict[str, Any]:
    project = scoped_project(request, project_id, Role.ADMIN)
    if project.deploy_key_public and not payload.replace:
        raise ServiceError(
            'The project has a deploy key; send {"replace": true} to replace it.', field="replace", status=409
        )
    rotate_deploy_key(project=project, actor=actor(request), origin=origin(request))
    project.refresh_from_db()
    return {"public_key": project.deploy_key_public, "created_at": project.deploy_key_created_at}


# --- environments --------------------------------------------------------------------------------
def _stack_component_out(sc: StackComponent, upgrades: list[str]) -> dict[str, Any]:
    return {
        "name": sc.name,
        "component": sc.component.code,
        "component_name": sc.component.name,
        "kind": sc.component.kind,
        "version": sc.version.version,
        "version_status": sc.version.status,
        "eol": sc.version.eol,
        "end_of_life": sc.version.is_end_of_life,
        "eol_soon": sc.version.eol_soon,
        "upgrade_available": bool(upgrades),
        "upgrades": upgrades,
        "size": sc.size.code,
        "replicas": sc.replicas,
        "public": sc.public,
    }


def _environment_out(env: Environment) -> dict[str, Any]:
    active = env.operations.filter(status__in=ACTIVE_OPERATION_STATUSES).values_list("pk", flat=True).first()
    components = list(env.components.select_related("component", "version", "size"))
    # The versions each can upgrade to, newest first: the rule the pages and the service use.
    upgrades = offers.upgrades_for(components)
    return {
        "id": env.pk,
        "name": env.name,
        "project": env.project_id,
        "project_name": env.project.name,
        "organization": env.project.organization_id,
        "status": env.status,
        "status_detail": env.status_detail,
        "desired_running": env.desired_running,
        "region": env.project.region.code,
        "kernel": env.kernel.line,
        "template": env.template.code if env.template else None,
        "framework": env.framework.code if env.framework else None,
        "url": env.public_url,
        "release": env.current_release.number if env.current_release else None,
        "active_operation": active,
        "components": [
            _stack_component_out(sc, [cv.version for cv in upgrades[sc.name]]) for sc in components
        ],
    }


def _writable(request: HttpRequest, environment_id: int, role: str = Role.DEVELOPER) -> Environment:
    return scoped_environment(request, environment_id, role)


@router.get("/environments/{int:environment_id}", response=EnvironmentOut, summary="One environment")
def get_environment(request: HttpRequest, environment_id: int) -> dict[str, Any]:
    return _environment_out(scoped_environment(request, environment_id))


@router.post("/environments/{int:environment_id}/scale", response={202: OperationBrief}, summary="Scale")
def scale(request: HttpRequest, environment_id: int, payload: ScaleIn) -> Status:
    if payload.replicas is None and payload.size is None:
        raise ServiceError("Give replicas, a size or both.", field="replicas")
    op = lifecycle.scale(
        environment=_writable(request, environment_id),
        actor=actor(request),
        component=payload.component,
        replicas=payload.replicas,
        size=payload.size,
        origin=origin(request),
    )
    return Status(202, _operation_brief(op))


@router.post(
    "/environments/{int:environment_id}/upgrade",
    response={202: OperationBrief},
    summary="Upgrade a component",
)
def upgrade(request: HttpRequest, environment_id: int, payload: UpgradeIn) -> Status:
    op = lifecycle.upgrade(
        environment=_writable(request, environment_id),
        actor=actor(request),
        component=payload.component,
        version=payload.version,
        origin=origin(request),
    )
    return Status(202, _operation_brief(op))


@router.get("/environments/{int:environment_id}/releases", response=list[ReleaseOut], summary="Releases")
@paginate(LimitOffsetPagination)
def list_releases(request: HttpRequest, environment_id: int) -> list[dict[str, Any]]:
    env = scoped_environment(request, environment_id)
    return [
        {
            "number": r.number,
            "source": r.source,
            "source_detail": r.source_detail,
            "commit": r.commit,
            "note": r.note,
            "content_files": r.content_files,
            "content_bytes": r.content_bytes,
            "ran": r.ran_at is not None,
            "components": [
                {k: row.get(k) for k in ("name", "component", "version", "size", "replicas", "public")}
                for row in r.spec.get("components", [])
            ],
            "created_at": r.created_at,
            "current": r.pk == env.current_release_id,
        }
        for r in Release.objects.filter(environment=env).order_by("-number")
    ]


@router.post(
    "/environments/{int:environment_id}/rollback", response={202: OperationBrief}, summary="Roll back"
)
def rollback(request: HttpRequest, environment_id: int, payload: RollbackIn) -> Status:
    op = lifecycle.rollback(
        environment=_writable(request, environment_id),
        actor=actor(request),
        release_number=payload.release,
        origin=origin(request),
    )
    return Status(202, _operation_brief(op))


@router.post("/environments/{int:environment_id}/stop", response={202: OperationBrief}, summary="Stop")
def stop(request: HttpRequest, environment_id: int) -> Status:
    op = lifecycle.set_running(
        environment=_writable(request, environment_id),
        actor=actor(request),
        running=False,
        origin=origin(request),
    )
    return Status(202, _operation_brief(op))


@router.post(
    "/environments/{int:environment_id}/redeploy", response={202: OperationBrief}, summary="Redeploy"
)
def redeploy(request: HttpRequest, environment_id: int) -> Status:
    """Apply the running release again, so changed variables reach the containers
    (stateless components blue/green, without downtime)."""
    op = lifecycle.redeploy(
        environment=_writable(request, environment_id), actor=actor(request), origin=origin(request)
    )
    return Status(202, _operation_brief(op))


@router.post("/environments/{int:environment_id}/start", response={202: OperationBrief}, summary="Start")
def start(request: HttpRequest, environment_id: int) -> Status:
    op = lifecycle.set_running(
        environment=_writable(request, environment_id),
        actor=actor(request),
        running=True,
        origin=origin(request),
    )
    return Status(202, _operation_brief(op))


@router.post(
    "/environments/{int:environment_id}/destroy",
    response={202: OperationBrief},
    summary="Destroy, data included (admins; confirm with the project's name)",
)
def destroy(request: HttpRequest, environment_id: int, payload: DestroyIn) -> Status:
    op = lifecycle.destroy(
        environment=_writable(request, environment_id, Role.ADMIN),
        actor=actor(request),
        confirmation=payload.confirmation,
        origin=origin(request),
    )
    return Status(202, _operation_brief(op))


# --- domains -------------------------------------------------------------------------------------
def _domain_out(d: Domain) -> dict[str, Any]:
    shown = domains.status(d)
    return {
        "id": d.pk,
        "hostname": d.hostname,
        "path_prefix": d.path_prefix,
        "strip_prefix": d.strip_prefix,
        "created_at": d.created_at,
        "status": shown["status"],
        "verified_at": shown["verified_at"],
        "record": {"type": "TXT", "name": shown["record_name"], "value": shown["record_value"]},
        "last_checked_at": shown["last_checked_at"],
        "check_error": shown["check_error"],
        "http_check_url": shown["http_check_url"],
        "hsts": d.hsts,
        "certificate": (
            EdgeCertificate.objects.filter(hostname=d.hostname).first() if d.claim.verified_at else None
        ),
    }


@router.post(
    "/environments/{int:environment_id}/domains/{int:domain_id}/hsts",
    response=DomainOut,
    summary="Turn HSTS on or off for a domain",
)
def set_domain_hsts(
    request: HttpRequest, environment_id: int, domain_id: int, payload: DomainHstsIn
) -> dict[str, Any]:
    env = _writable(request, environment_id)
    domain = (
        Domain.objects.select_related("claim", "environment__project__organization")
        .filter(environment=env, pk=domain_id)
        .first()
    )
    if domain is None:
        raise Http404
    domains.set_hsts(domain=domain, hsts=payload.hsts, actor=actor(request), origin=origin(request))
    return _domain_out(domain)


@router.get("/environments/{int:environment_id}/domains", response=list[DomainOut], summary="Domains")
def list_domains(request: HttpRequest, environment_id: int) -> list[dict[str, Any]]:
    env = scoped_environment(request, environment_id)
    return [_domain_out(d) for d in Domain.objects.filter(environment=env).select_related("claim")]


@router.post("/environments/{int:environment_id}/domains", response={201: DomainOut}, summary="Add a domain")
def add_domain(request: HttpRequest, environment_id: int, payload: DomainIn) -> Status:
    domain = lifecycle.add_domain(
        environment=_writable(request, environment_id),
        actor=actor(request),
        hostname=payload.hostname,
        path_prefix=payload.path_prefix,
        strip_prefix=payload.strip_prefix,
        origin=origin(request),
    )
    return Status(201, _domain_out(domain))


@router.post(
    "/environments/{int:environment_id}/domains/{int:domain_id}/check",
    response=DomainOut,
    summary="Check a pending domain's TXT record now",
)
def check_domain(request: HttpRequest, environment_id: int, domain_id: int) -> dict[str, Any]:
    env = _writable(request, environment_id)
    found = Domain.objects.select_related("claim", "environment__project__organization").filter(
        environment=env, pk=domain_id
    )
    domain = found.first()
    if domain is None:
        raise Http404
    domains.check_now(domain=domain, actor=actor(request), origin=origin(request))
    return _domain_out(domain)


@router.delete(
    "/environments/{int:environment_id}/domains/{int:domain_id}",
    response={204: None},
    summary="Remove a domain",
)
def remove_domain(request: HttpRequest, environment_id: int, domain_id: int) -> Status:
    env = _writable(request, environment_id)
    domain = Domain.objects.select_related("environment__project__organization").filter(
        environment=env, pk=domain_id
    )
    found = domain.first()
    if found is None:
        raise Http404
    lifecycle.remove_domain(domain=found, actor=actor(request), origin=origin(request))
    return Status(204, None)


# --- variables -----------------------------------------------------------------------------------
def _variable_out(v: Variable) -> dict[str, Any]:
    return {
        "name": v.name,
        "component": v.component,
        "secret": v.is_secret,
        "generated": v.generated,
        "value": None if v.is_secret else v.value,
        "updated_at": v.updated_at,
    }


@router.get("/environments/{int:environment_id}/variables", response=list[VariableOut], summary="Variables")
def list_variables(request: HttpRequest, environment_id: int) -> list[dict[str, Any]]:
    env = scoped_environment(request, environment_id)
    return [_variable_out(v) for v in Variable.objects.filter(environment=env)]


@router.put(
    "/environments/{int:environment_id}/variables",
    response=VariableOut,
    summary="Set a variable (reaches the containers with the next deploy)",
)
def set_variable(request: HttpRequest, environment_id: int, payload: VariableIn) -> dict[str, Any]:
    env = _writable(request, environment_id)
    lifecycle.set_variable(
        environment=env,
        actor=actor(request),
        name=payload.name,
        value=payload.value,
        secret=payload.secret,
        component=payload.component,
        origin=origin(request),
    )
    return _variable_out(
        Variable.objects.get(environment=env, component=payload.component, name=payload.name)
    )


@router.delete(
    "/environments/{int:environment_id}/variables/{name}", response={204: None}, summary="Delete a variable"
)
def delete_variable(request: HttpRequest, environment_id: int, name: str, component: str = "") -> Status:
    lifecycle.delete_variable(
        environment=_writable(request, environment_id),
        actor=actor(request),
        name=name,
        component=component,
        origin=origin(request),
    )
    return Status(204, None)


# --- content -------------------------------------------------------------------------------------
@router.post(
    "/environments/{int:environment_id}/content",
    response={202: OperationBrief},
    summary="Deploy an uploaded archive (.tar, .tar.gz or .zip; multipart field 'archive')",
)
def upload_content(request: HttpRequest, environment_id: int, archive: File[UploadedFile]) -> Status:
    op = lifecycle.deploy_content(
        environment=_writable(request, environment_id),
        actor=actor(request),
        archive=archive,  # type: ignore[arg-type]
        filename=archive.name or "",
        origin=origin(request),
    )
    return Status(202, _operation_brief(op))


@router.post(
    "/environments/{int:environment_id}/git",
    response={202: OperationBrief},
    summary="Deploy from a git branch",
)
def deploy_git(request: HttpRequest, environment_id: int, payload: GitIn) -> Status:
    op = lifecycle.deploy_content(
        environment=_writable(request, environment_id),
        actor=actor(request),
        git_url=payload.url,
        branch=payload.branch,
        origin=origin(request),
    )
    return Status(202, _operation_brief(op))


# --- operations, logs, samples -------------------------------------------------------------------
def _operation_out(op: Operation) -> dict[str, Any]:
    return {
        **_operation_brief(op),
        "environment": op.environment_id,
        "release": op.release.number if op.release_id and op.release else None,
        # The git address may carry credentials: only its redacted form is given.
        "params": {k: v for k, v in op.params.items() if not k.endswith("_encrypted")},
        "steps": op.steps,
        "log": op.log,
        "error": op.error,
        "started_at": op.started_at,
    }


@router.get(
    "/environments/{int:environment_id}/operations",
    response=list[OperationOut],
    summary="Operations, newest first",
)
@paginate(LimitOffsetPagination)
def list_operations(request: HttpRequest, environment_id: int) -> list[dict[str, Any]]:
    env = scoped_environment(request, environment_id)
    return [_operation_out(op) for op in Operation.objects.filter(environment=env).select_related("release")]


@router.get(
    "/operations/{int:operation_id}", response=OperationOut, summary="One operation: status, steps, log"
)
def get_operation(request: HttpRequest, operation_id: int) -> dict[str, Any]:
    return _operation_out(scoped_operation(request, operation_id))


@router.get(
    "/environments/{int:environment_id}/components/{component}/logs",
    response=LogsOut,
    summary="The last log lines of a component's replicas",
)
def component_logs(
    request: HttpRequest, environment_id: int, component: str, lines: int = Query(200, ge=1, le=LOG_LINES_MAX)
) -> dict[str, Any]:
    env = scoped_environment(request, environment_id)
    if not env.components.filter(name=component).exists():
        raise ServiceError(f"This stack has no component {component[:30]!r}.", field="component", status=404)
    try:
        found = operations.component_logs(env, component, lines)
    except BackendError as exc:
        raise ServiceError("The logs cannot be read right now; try again shortly.", status=503) from exc
    return {"component": component, "lines": found[-lines:]}


@router.get(
    "/environments/{int:environment_id}/samples",
    response=list[SampleOut],
    summary="CPU and memory samples per replica, oldest first",
)
def resource_samples(
    request: HttpRequest,
    environment_id: int,
    component: str = "",
    minutes: int = Query(60, ge=1, le=7 * 24 * 60),
) -> QuerySet[ResourceSampleRow]:
    env = scoped_environment(request, environment_id)
    samples = ResourceSampleRow.objects.filter(
        environment=env, taken_at__gte=timezone.now() - timedelta(minutes=minutes)
    )
    if component:
        samples = samples.filter(component=component)
    return samples.order_by("taken_at", "component", "replica")[:5000]


# --- backups (stacks.runtime.backups; docs/backups.md) -----------------------------------------------
class BackupOut(Schema):
    id: int
    environment: int = Field(validation_alias="environment_id")
    batch: str
    component: str
    kind: str
    volume: str
    status: str
    trigger: str
    size_bytes: int
    added_bytes: int
    duration_seconds: float
    error: str
    created_at: datetime
    finished_at: datetime | None
    downloadable: bool


class RestoreIn(Schema):
    confirmation: str = Field("", description="In place: the component's name, typed to confirm")
    new_environment: str = Field("", description="Restore the backup run into this new environment instead")


class SettleIn(Schema):
    undo: bool = Field(False, description="Put the replaced data back instead of keeping the restored data")


def scoped_backup(request: HttpRequest, backup_id: int, role: str = Role.VIEWER) -> Any:
    backup = get_backup_for_user(request, backup_id, role=role)
    within_token(request, backup.environment.project.organization_id)
    return backup


@router.get("/environments/{int:environment_id}/backups", response=list[BackupOut], summary="Backups")
@paginate(LimitOffsetPagination)
def list_backups(request: HttpRequest, environment_id: int) -> Any:
    env = scoped_environment(request, environment_id)
    return Backup.objects.filter(environment=env).order_by("-created_at", "-id")


@router.post(
    "/environments/{int:environment_id}/backups", response={202: list[BackupOut]}, summary="Back up now"
)
def back_up_now(request: HttpRequest, environment_id: int) -> Status:
    rows = backups.request_backup(
        environment=_writable(request, environment_id), actor=actor(request), origin=origin(request)
    )
    return Status(202, rows)


@router.post("/backups/{int:backup_id}/restore", response={202: OperationBrief}, summary="Restore a backup")
def restore_backup(request: HttpRequest, backup_id: int, payload: RestoreIn) -> Status:
    op = backups.request_restore(
        backup=scoped_backup(request, backup_id, Role.ADMIN),
        actor=actor(request),
        new_environment=payload.new_environment,
        confirmation=payload.confirmation,
        origin=origin(request),
    )
    return Status(202, _operation_brief(op))


@router.post(
    "/environments/{int:environment_id}/backups/upload",
    response={202: BackupOut},
    summary="Restore a database from an uploaded PostgreSQL dump (pg_dump -Fc; multipart field 'dump')",
)
def upload_dump(
    request: HttpRequest,
    environment_id: int,
    dump: File[UploadedFile],
    component: Form[str],
    confirmation: Form[str],
) -> Status:
    backup = backups.upload_restore(
        environment=_writable(request, environment_id, Role.ADMIN),
        component=component,
        upload=dump,
        actor=actor(request),
        confirmation=confirmation,
        origin=origin(request),
    )
    return Status(202, backup)


@router.post(
    "/operations/{int:operation_id}/settle-restore", response={204: None}, summary="Keep or undo a restore"
)
def settle_restore(request: HttpRequest, operation_id: int, payload: SettleIn) -> Status:
    backups.settle_restore(
        operation=scoped_operation(request, operation_id),
        actor=actor(request),
        undo=payload.undo,
        origin=origin(request),
    )
    return Status(204, None)


# --- data kept after stateful upgrades (stacks.runtime.old_data) ------------------------------------
class OldDataOut(Schema):
    operation: int = Field(validation_alias="operation_id", description="The upgrade that kept it")
    component: str
    version: str = Field(description="The version that wrote it")
    upgraded_to: str
    kept_since: datetime
    size_bytes: int | None = Field(description="Measured when the upgrade finished; null: not measured")


class OldDataDeleteIn(Schema):
    confirmation: str = Field(description="The component's name, to confirm", max_length=40)


@router.get(
    "/environments/{int:environment_id}/old-data",
    response=list[OldDataOut],
    summary="Data kept after stateful upgrades, until deleted",
)
def list_old_data(request: HttpRequest, environment_id: int) -> list[old_data.OldData]:
    return old_data.kept_old_data(scoped_environment(request, environment_id))


@router.post(
    "/environments/{int:environment_id}/old-data/{int:operation_id}/delete",
    response={204: None},
    summary="Delete the data an upgrade kept (admins; final)",
)
def delete_old_data(
    request: HttpRequest, environment_id: int, operation_id: int, payload: OldDataDeleteIn
) -> Status:
    old_data.delete_old_data(
        environment=scoped_environment(request, environment_id, Role.ADMIN),
        actor=actor(request),
        operation_id=operation_id,
        confirmation=payload.confirmation,
        origin=origin(request),
    )
    return Status(204, None)


@router.get("/backups/{int:backup_id}/download", summary="Download a database backup (a standard dump file)")
def download_backup(request: HttpRequest, backup_id: int) -> Any:
    backup = scoped_backup(request, backup_id, Role.ADMIN)
    filename, stream = backups.download(backup=backup, actor=actor(request), origin=origin(request))
    response = StreamingHttpResponse(
        stream, content_type=backups.CONTENT_TYPES.get(backup.kind, "application/octet-stream")
    )
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
