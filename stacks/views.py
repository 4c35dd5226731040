"""Stack pages: the public catalog, the new-project wizard, project and environment pages
with their actions, and operation progress.

Thin: an access helper, one ``stacks.runtime.lifecycle`` service call, then redirect or render.
Nothing here talks to an engine: status comes from the database (Environment,
Operation, StackComponent, Release) as the operations left it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Prefetch
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from projects.access import (
    AuthedRequest,
    current_membership,
    get_environment_for_user,
    get_membership_for_user,
    get_project_for_user,
)
from projects.forms import attempt
from projects.models import Environment, EnvironmentStatus, Membership, Role
from projects.sensitive import require_recent_authentication
from projects.services import Origin, ServiceError, forget_ssh_host_keys, rotate_deploy_key
from stacks import forms as stack_forms
from stacks.access import get_backup_for_user, get_operation_for_user
from stacks.catalog import offers
from stacks.models import (
    Backup,
    Component,
    ComponentVersion,
    Domain,
    KernelVersion,
    Operation,
    Region,
    StackComponent,
    StackTemplate,
    StackTemplateComponent,
    Variable,
)
from stacks.runtime import backups, certificates, content_store, disk, domains, lifecycle, old_data


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


def _partial(request: HttpRequest, template: str, name: str) -> str:
    """The page, or its named partial for an htmx request (not a boosted navigation)."""
    return f"{template}#{name}" if request.htmx and not request.htmx.boosted else template  # type: ignore[attr-defined]


# --- the wizard ----------------------------------------------------------------------------------
@login_required
@require_http_methods(["GET", "POST"])
def project_new(request: AuthedRequest) -> HttpResponse:
    current = current_membership(request)
    if current is None:
        messages.info(request, "Create an organization first: projects belong to one.")
        return redirect("projects:organization_create")
    membership = get_membership_for_user(request, current.organization_id, role=Role.DEVELOPER)
    wizard = stack_forms.Wizard(request, membership)
    if request.method == "POST" and wizard.action == "create":
        if wizard.can_create:
            environment, status = attempt(wizard.form, lambda: wizard.create(Origin.from_request(request)))
            if environment:
                messages.success(request, f"Creating {environment.project.name}: the deploy has started.")
                return redirect("stacks:environment", environment_id=environment.pk)
        else:
            status = 400
        wizard.can_create = False
        return render(request, "stacks/project_new.html", wizard.context(), status=status)
    part = "summary" if request.POST.get("part") == "summary" else "wizard"
    return render(request, _partial(request, "stacks/project_new.html", part), wizard.context())


# --- project and environment pages ---------------------------------------------------------------
@login_required
@require_GET
def project_detail(request: AuthedRequest, project_id: int) -> HttpResponse:
    project = get_project_for_user(request, project_id)
    environments = list(
        Environment.objects.select_related(
            "project__organization", "project__region", "kernel", "framework", "template", "current_release"
        ).filter(project=project)
    )
    if not environments:
        raise Http404
    live = [e for e in environments if e.status != EnvironmentStatus.DESTROYED]
    environment = (live or environments)[0]
    environment.membership = project.membership  # type: ignore[attr-defined]
    return _environment_page(request, environment, environments=environments)


@login_required
@require_GET
def environment_detail(request: AuthedRequest, environment_id: int) -> HttpResponse:
    environment = get_environment_for_user(request, environment_id)
    return _environment_page(request, environment)


def _environment_page(
    request: HttpRequest,
    environment: Environment,
    *,
    environments: list[Environment] | None = None,
    bound: dict[str, forms.Form] | None = None,
    component_errors: dict[str, str] | None = None,
    status: int = 200,
) -> HttpResponse:
    membership: Membership = environment.membership  # type: ignore[attr-defined]
    if environments is None:
        environments = list(
            Environment.objects.filter(project_id=environment.project_id).only("id", "name", "status")
        )
    components = list(
        StackComponent.objects.filter(environment=environment)
        .select_related("component", "version", "size")
        .prefetch_related("component__sizes")
    )
    upgrades = offers.upgrades_for(components)
    sizes = {c.pk: list(c.component.sizes.all()) for c in components} if components else {}
    operations = list(
        Operation.objects.filter(environment=environment)
        .select_related("release")
        .order_by("-created_at", "-id")[:6]
    )
    active = next((op for op in operations if op.is_active), None)
    hosts = offers.hosts_of(environment)
    release = environment.current_release
    applied = {r.get("name"): r for r in (release.spec.get("components", []) if release else [])}
    rows = [
        {
            "sc": c,
            "upgrades": upgrades.get(c.name, []),
            "sizes": sizes.get(c.pk, []),
            "hosts": min(len(hosts), c.replicas) if c.replicas else 0,
            "error": (component_errors or {}).get(c.name, ""),
            "pending": _pending(c, applied.get(c.name), active),
        }
        for c in components
    ]
    forms_ = {
        "domain": stack_forms.DomainForm(),
        "variable": stack_forms.VariableForm(),
        "upload": stack_forms.UploadForm(),
        "git": stack_forms.GitForm(),
        "destroy": stack_forms.DestroyForm(),
        "rollback": stack_forms.RollbackForm(),
        **(bound or {}),
    }
    context = {
        "environment": environment,
        "project": environment.project,
        "environments": environments,
        "membership": membership,
        # A suspended project takes no changes (the services answer 423): no live buttons.
        "can_write": membership.has_role(Role.DEVELOPER) and environment.project.suspended_at is None,
        "can_admin": membership.has_role(Role.ADMIN) and environment.project.suspended_at is None,
        "is_live": environment.status not in (EnvironmentStatus.DESTROYING, EnvironmentStatus.DESTROYED),
        "rows": rows,
        "hosts": hosts,
        "domains": (
            domain_rows := list(Domain.objects.filter(environment=environment).select_related("claim"))
        ),
        "https": certificates.https_enabled(),
        "https_port": certificates.port_suffix(),
        "certificates": certificates.shown_for(environment, domain_rows),
        "variables": list(
            Variable.objects.filter(environment=environment).only(
                "id", "name", "component", "value", "is_secret", "generated", "updated_at"
            )
        ),
        "releases": (
            releases := list(environment.releases.select_related("created_by").order_by("-number")[:20])
        ),
        "content_pruned": content_store.pruned(releases),  # no longer rollback targets
        "operation": active or (operations[0] if operations else None),
        "operations": operations,
        "active_release_id": active.release_id if active else None,
        "variables_pending": active is None and lifecycle.pending_variables(environment),
        "forms": forms_,
        "max_replicas": _max_replicas(),
        # The last measurement of each volume (docs/backends.md, "Disk limits").
        "volumes": disk.volume_usage(environment.pk),
        # Restored from a backup onto another host after its own was lost: what was lost.
        "host_restore": backups.host_restore_notice(environment, operations),
        # Data stateful upgrades kept (deleted by an admin, confirmed).
        "old_data": old_data.kept_old_data(environment),
    }
    return render(request, "stacks/environment.html", context, status=status)


def _pending(desired: StackComponent, applied: dict[str, Any] | None, active: Operation | None) -> str:
    """Desired (the rows the customer edits) against applied (the running release), in words,
    while they differ: "scaling to 3 (2 run now)"."""
    if applied is None:
        return "being added" if active else "not running yet"
    changes = []
    if applied.get("version") != desired.version.version:
        changes.append(f"upgrading to {desired.version.version} ({applied.get('version')} runs now)")
    if applied.get("replicas") != desired.replicas:
        changes.append(f"scaling to {desired.replicas} ({applied.get('replicas')} run now)")
    if applied.get("size") != desired.size.code:
        changes.append(f"resizing to {desired.size.name}")
    if not changes:
        return ""
    return "; ".join(changes) + ("…" if active else " (waiting for its operation)")


def _max_replicas() -> int:
    return int(settings.STACKPORT_MAX_REPLICAS)


# --- environment actions: POST only, one service each ---------------------------------------------
def _act(
    request: AuthedRequest,
    environment_id: int,
    form_class: type[forms.Form],
    key: str,
    call: Callable[[Environment, dict[str, Any]], Any],
    success: str,
    *,
    role: str = Role.DEVELOPER,
    component_field: bool = False,
    confirm: Callable[[Environment, dict[str, Any]], str] | None = None,
) -> HttpResponse:
    """The shape of every action: access check, form, one service call, redirect; a refusal
    re-renders the environment page with the message next to the field, at its status.
    ``confirm`` names what a destructive action will do: until the request says
    ``confirmed``, a confirmation page asks first (it works without JavaScript)."""
    environment = get_environment_for_user(request, environment_id, role=role)
    form = form_class(request.POST, request.FILES)
    status = 400
    if form.is_valid():
        question = confirm(environment, form.cleaned_data) if confirm else ""
        if question and request.POST.get("confirmed") != "yes":
            fields = [
                (k, v) for k, v in request.POST.items() if k not in ("csrfmiddlewaretoken", "confirmed")
            ]
            context = {
                "environment": environment,
                "question": question,
                "fields": fields,
                "action": request.path,
            }
            return render(request, "stacks/confirm.html", context)
        _result, status = attempt(form, lambda: call(environment, form.cleaned_data))
        if status == 200:
            messages.success(request, success.format(**form.cleaned_data))
            return redirect(reverse("stacks:environment", kwargs={"environment_id": environment.pk}))
    environment.refresh_from_db()
    component_errors = None
    if component_field:
        message = " ".join(str(e) for errors in form.errors.values() for e in errors)
        component_errors = {str(request.POST.get("component", ""))[:30]: message}
    return _environment_page(
        request, environment, bound={key: form}, component_errors=component_errors, status=status
    )


@login_required
@require_POST
def environment_scale(request: AuthedRequest, environment_id: int) -> HttpResponse:
    return _act(
        request,
        environment_id,
        stack_forms.ScaleForm,
        "scale",
        lambda env, d: lifecycle.scale(
            environment=env,
            actor=request.user,
            component=d["component"],
            replicas=d.get("replicas"),
            size=d.get("size") or None,
            origin=Origin.from_request(request),
        ),
        "Scaling {component}.",
        component_field=True,
        confirm=_scale_question,
    )


def _rollback_question(environment: Environment, data: dict[str, Any]) -> str:
    target = environment.releases.filter(number=data["release"]).first()
    if target is None or target.pk == environment.current_release_id or target.ran_at is None:
        return ""  # nothing to confirm: the service says why it refuses
    return (
        f"Roll back to release {target.number}? Its components, versions and content replace what runs "
        "now (blue/green: the site keeps answering). Data in databases is not rolled back."
    )


def _scale_question(environment: Environment, data: dict[str, Any]) -> str:
    if data.get("replicas") != 0 or not environment.components.filter(name=data["component"]).exists():
        return ""
    if environment.components.filter(name=data["component"], public=True).exists():
        return ""  # refused by the service: the public component keeps a replica
    return f"Scale {data['component']} to zero replicas? It stops running until you scale it up again."


@login_required
@require_POST
def environment_upgrade(request: AuthedRequest, environment_id: int) -> HttpResponse:
    return _act(
        request,
        environment_id,
        stack_forms.UpgradeForm,
        "upgrade",
        lambda env, d: lifecycle.upgrade(
            environment=env,
            actor=request.user,
            component=d["component"],
            version=d["version"],
            origin=Origin.from_request(request),
        ),
        "Moving {component} to version {version}.",
        component_field=True,
    )


@login_required
@require_POST
def environment_rollback(request: AuthedRequest, environment_id: int) -> HttpResponse:
    return _act(
        request,
        environment_id,
        stack_forms.RollbackForm,
        "rollback",
        lambda env, d: lifecycle.rollback(
            environment=env,
            actor=request.user,
            release_number=d["release"],
            origin=Origin.from_request(request),
        ),
        "Rolling back to release {release}.",
        confirm=_rollback_question,
    )


@login_required
@require_POST
def domain_add(request: AuthedRequest, environment_id: int) -> HttpResponse:
    return _act(
        request,
        environment_id,
        stack_forms.DomainForm,
        "domain",
        lambda env, d: lifecycle.add_domain(
            environment=env,
            actor=request.user,
            hostname=d["hostname"],
            path_prefix=d["path_prefix"],
            strip_prefix=d["strip_prefix"],
            origin=Origin.from_request(request),
        ),
        "Added {hostname}{path_prefix}. Point its DNS at the hoster's edge; "
        "a pending domain is routed once its TXT record (shown below) is seen.",
    )


@login_required
@require_POST
def domain_check(request: AuthedRequest, environment_id: int, domain_id: int) -> HttpResponse:
    """The "Check now" button of a pending domain: its TXT record looked up at once."""

    environment = get_environment_for_user(request, environment_id, role=Role.DEVELOPER)
    domain = Domain.objects.filter(environment=environment, pk=domain_id).select_related("claim").first()
    if domain is None:
        raise Http404
    form = forms.Form(request.POST)
    done, status = attempt(
        form,
        lambda: domains.check_now(domain=domain, actor=request.user, origin=Origin.from_request(request)),
    )
    if done:
        claim = domain.claim
        if claim.verified_at:
            messages.success(request, f"{domain.hostname} is verified; its route follows in a moment.")
        else:
            messages.warning(request, f"{domain.hostname} is still pending: {claim.check_error}")
        return redirect("stacks:environment", environment_id=environment.pk)
    return _environment_page(request, environment, bound={"domain": form}, status=status)


@login_required
@require_POST
def domain_hsts(request: AuthedRequest, environment_id: int, domain_id: int) -> HttpResponse:
    """Turn HSTS on (``hsts=on``) or off for one domain."""
    environment = get_environment_for_user(request, environment_id, role=Role.DEVELOPER)
    domain = Domain.objects.filter(environment=environment, pk=domain_id).select_related("claim").first()
    if domain is None:
        raise Http404
    hsts = request.POST.get("hsts") == "on"
    form = forms.Form(request.POST)
    done, status = attempt(
        form,
        lambda: domains.set_hsts(
            domain=domain, hsts=hsts, actor=request.user, origin=Origin.from_request(request)
        ),
    )
    if done:
        state = "on" if hsts else "off"
        messages.success(request, f"HSTS is {state} for {domain.hostname}.")
        return redirect("stacks:environment", environment_id=environment.pk)
    return _environment_page(request, environment, bound={"domain": form}, status=status)


@login_required
@require_POST
def domain_remove(request: AuthedRequest, environment_id: int, domain_id: int) -> HttpResponse:
    environment = get_environment_for_user(request, environment_id, role=Role.DEVELOPER)
    domain = (
        Domain.objects.filter(environment=environment, pk=domain_id).select_related("environment").first()
    )
    if domain is None:
        raise Http404
    form = forms.Form(request.POST)
    done, status = attempt(
        form,
        lambda: (
            lifecycle.remove_domain(domain=domain, actor=request.user, origin=Origin.from_request(request))
            or True
        ),
    )
    if done:
        messages.success(request, f"Removed {domain.hostname}{domain.path_prefix}.")
        return redirect("stacks:environment", environment_id=environment.pk)
    return _environment_page(request, environment, bound={"domain": form}, status=status)


def _recent_login_for_secrets(request: AuthedRequest, environment_id: int) -> None:
    """Setting a secret, or overwriting or deleting one, asks for a recent re-authentication
    (allauth's page, then this POST again). API tokens cannot re-authenticate: not asked."""
    environment = get_environment_for_user(request, environment_id, role=Role.DEVELOPER)
    name, component = str(request.POST.get("name", "")), str(request.POST.get("component", ""))
    touches_secret = Variable.objects.filter(
        environment=environment, name=name, component=component, is_secret=True
    ).exists()
    if request.POST.get("secret") or touches_secret:
        require_recent_authentication(request)


@login_required
@require_POST
def variable_set(request: AuthedRequest, environment_id: int) -> HttpResponse:
    _recent_login_for_secrets(request, environment_id)
    return _act(
        request,
        environment_id,
        stack_forms.VariableForm,
        "variable",
        lambda env, d: (
            lifecycle.set_variable(
                environment=env,
                actor=request.user,
                name=d["name"],
                value=d["value"],
                secret=d["secret"],
                component=d["component"],
                origin=Origin.from_request(request),
            )
            or True
        ),
        "Saved {name}. It reaches the containers with the next deploy.",
    )


@login_required
@require_POST
def variable_delete(request: AuthedRequest, environment_id: int) -> HttpResponse:
    _recent_login_for_secrets(request, environment_id)
    return _act(
        request,
        environment_id,
        stack_forms.VariableDeleteForm,
        "variable",
        lambda env, d: (
            lifecycle.delete_variable(
                environment=env,
                actor=request.user,
                name=d["name"],
                component=d["component"],
                origin=Origin.from_request(request),
            )
            or True
        ),
        "Deleted {name}.",
    )


@login_required
@require_POST
def content_upload(request: AuthedRequest, environment_id: int) -> HttpResponse:
    return _act(
        request,
        environment_id,
        stack_forms.UploadForm,
        "upload",
        lambda env, d: lifecycle.deploy_content(
            environment=env,
            actor=request.user,
            archive=d["archive"],
            filename=d["archive"].name,
            origin=Origin.from_request(request),
        ),
        "Uploaded; deploying the new content.",
    )


@login_required
@require_POST
def content_git(request: AuthedRequest, environment_id: int) -> HttpResponse:
    return _act(
        request,
        environment_id,
        stack_forms.GitForm,
        "git",
        lambda env, d: lifecycle.deploy_content(
            environment=env,
            actor=request.user,
            git_url=d["git_url"],
            branch=d["branch"],
            origin=Origin.from_request(request),
        ),
        "Deploying branch {branch}.",
    )


@login_required
@require_POST
def deploy_key_rotate(request: AuthedRequest, environment_id: int) -> HttpResponse:
    """A deploy key for the environment's project; replacing one asks first (the old key
    stops working at once)."""
    return _act(
        request,
        environment_id,
        forms.Form,
        "deploy_key",
        lambda env, d: rotate_deploy_key(
            project=env.project, actor=request.user, origin=Origin.from_request(request)
        ),
        "The project has a new deploy key: add it to your git host.",
        role=Role.ADMIN,
        confirm=lambda env, d: (
            "Replace the deploy key? Fetches with the current key stop working until you add the new "
            "public key to your git host."
            if env.project.deploy_key_public
            else ""
        ),
    )


@login_required
@require_POST
def ssh_host_keys_forget(request: AuthedRequest, environment_id: int) -> HttpResponse:
    return _act(
        request,
        environment_id,
        forms.Form,
        "deploy_key",
        lambda env, d: forget_ssh_host_keys(
            project=env.project, actor=request.user, origin=Origin.from_request(request)
        ),
        "The recorded host keys are forgotten: the next fetch records the key the server shows.",
        role=Role.ADMIN,
    )


@login_required
@require_POST
def environment_stop(request: AuthedRequest, environment_id: int) -> HttpResponse:
    return _act(
        request,
        environment_id,
        forms.Form,
        "running",
        lambda env, d: lifecycle.set_running(
            environment=env, actor=request.user, running=False, origin=Origin.from_request(request)
        ),
        "Stopping the environment.",
        confirm=lambda env, d: (
            f"Stop {env}? Every container stops and visitors see a “This site is stopped” "
            "page until you start it again. Data in volumes is kept."
        ),
    )


@login_required
@require_POST
def environment_redeploy(request: AuthedRequest, environment_id: int) -> HttpResponse:
    return _act(
        request,
        environment_id,
        forms.Form,
        "running",
        lambda env, d: lifecycle.redeploy(
            environment=env, actor=request.user, origin=Origin.from_request(request)
        ),
        "Redeploying: the containers get the changed variables.",
    )


@login_required
@require_POST
def environment_start(request: AuthedRequest, environment_id: int) -> HttpResponse:
    return _act(
        request,
        environment_id,
        forms.Form,
        "running",
        lambda env, d: lifecycle.set_running(
            environment=env, actor=request.user, running=True, origin=Origin.from_request(request)
        ),
        "Starting the environment.",
    )


@login_required
@require_POST
def environment_destroy(request: AuthedRequest, environment_id: int) -> HttpResponse:
    return _act(
        request,
        environment_id,
        stack_forms.DestroyForm,
        "destroy",
        lambda env, d: lifecycle.destroy(
            environment=env,
            actor=request.user,
            confirmation=d["confirmation"],
            origin=Origin.from_request(request),
        ),
        "Destroying the environment and its data.",
        role=Role.ADMIN,
    )


# --- operations ----------------------------------------------------------------------------------
@login_required
@require_GET
def operation_detail(request: AuthedRequest, operation_id: int) -> HttpResponse:
    """The operation's progress; htmx polls its partial every second while it runs (the
    finished fragment has no trigger, so polling stops). ``?refresh=1`` (the environment
    page's embed) reloads the whole page once it has ended, for the new status."""
    operation: Operation = get_operation_for_user(request, operation_id)
    response = render(
        request,
        _partial(request, "stacks/operation.html", "progress"),
        {
            "operation": operation,
            "environment": operation.environment,
            "refresh": request.GET.get("refresh") == "1",
        },
    )
    if request.htmx and not operation.is_active and request.GET.get("refresh") == "1":
        response["HX-Refresh"] = "true"
    return response


# --- backups (stacks.runtime.backups; docs/backups.md) -----------------------------------------------
@login_required
@require_GET
def environment_backups(request: AuthedRequest, environment_id: int) -> HttpResponse:
    environment = get_environment_for_user(request, environment_id)
    membership: Membership = environment.membership  # type: ignore[attr-defined]
    writable = environment.project.suspended_at is None
    rows = list(Backup.objects.filter(environment=environment).order_by("-created_at", "-id")[:100])
    context: dict[str, Any] = {
        "environment": environment,
        "project": environment.project,
        "backups": rows,
        "pending": backups.pending_restore(environment),
        "can_write": membership.has_role(Role.DEVELOPER) and writable,
        "can_admin": membership.has_role(Role.ADMIN) and writable,
    }
    if request.GET.get("summary"):  # the environment page's embed (loaded after the page)
        context["backup_rows"] = rows[:5]
        return render(request, "stacks/backups/_table.html", context)
    return render(request, "stacks/backups/list.html", context)


@login_required
@require_POST
def environment_backup(request: AuthedRequest, environment_id: int) -> HttpResponse:
    environment = get_environment_for_user(request, environment_id, role=Role.DEVELOPER)
    try:
        backups.request_backup(
            environment=environment, actor=request.user, origin=Origin.from_request(request)
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "Backing up the environment's data.")
    return redirect(reverse("stacks:environment_backups", kwargs={"environment_id": environment.pk}))


@login_required
@require_http_methods(["GET", "POST"])
def backup_restore(request: AuthedRequest, backup_id: int) -> HttpResponse:
    """GET: what a restore does and the two ways (in place, typed confirmation; or a new
    environment); POST: request it, then follow the operation."""

    backup = get_backup_for_user(request, backup_id, role=Role.ADMIN)
    error, status = "", 200
    if request.method == "POST":
        try:
            operation = backups.request_restore(
                backup=backup,
                actor=request.user,
                new_environment=str(request.POST.get("new_environment", "")).strip()[:40],
                confirmation=str(request.POST.get("confirmation", ""))[:40],
                origin=Origin.from_request(request),
            )
        except ServiceError as exc:
            error, status = exc.message, exc.status
        else:
            messages.success(request, "Restoring the backup.")
            return redirect(reverse("stacks:operation", kwargs={"operation_id": operation.pk}))
    context = {"backup": backup, "environment": backup.environment, "error": error}
    return render(request, "stacks/backups/restore.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def backup_upload(request: AuthedRequest, environment_id: int) -> HttpResponse:
    """GET: upload a PostgreSQL dump to restore a database in place; POST: check it (a
    file pg_restore cannot read: 400, nothing changes), store and restore it."""

    environment = get_environment_for_user(request, environment_id, role=Role.ADMIN)
    databases = [c.name for c in environment.components.filter(component__code__in=backups.UPLOADABLE)]
    error, status = "", 200
    if request.method == "POST":
        upload = request.FILES.get("dump")
        try:
            if upload is None:
                raise ServiceError("Choose the dump file to upload.", field="file")
            backups.upload_restore(
                environment=environment,
                component=str(request.POST.get("component", ""))[:40],
                upload=upload,
                actor=request.user,
                confirmation=str(request.POST.get("confirmation", ""))[:40],
                origin=Origin.from_request(request),
            )
        except ServiceError as exc:
            error, status = exc.message, exc.status
        else:
            messages.success(request, "The dump is good: storing it, then restoring it in place.")
            return redirect(reverse("stacks:environment_backups", kwargs={"environment_id": environment.pk}))
    context = {"environment": environment, "databases": databases, "error": error}
    return render(request, "stacks/backups/upload.html", context, status=status)


@login_required
@require_POST
def restore_settle(request: AuthedRequest, operation_id: int) -> HttpResponse:
    operation = get_operation_for_user(request, operation_id, role=Role.ADMIN)
    undo = request.POST.get("action") == "undo"
    try:
        backups.settle_restore(
            operation=operation, actor=request.user, undo=undo, origin=Origin.from_request(request)
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "The previous data is back." if undo else "The restored data is kept.")
    return redirect(
        reverse("stacks:environment_backups", kwargs={"environment_id": operation.environment_id})
    )


@login_required
@require_http_methods(["GET", "POST"])
def old_data_delete(request: AuthedRequest, environment_id: int, operation_id: int) -> HttpResponse:
    """GET: what deleting the data an upgrade kept means (typed confirmation); POST: delete
    it (stacks.runtime.old_data), back to the environment."""

    environment = get_environment_for_user(request, environment_id, role=Role.ADMIN)
    entry = next((d for d in old_data.kept_old_data(environment) if d.operation_id == operation_id), None)
    if entry is None:
        raise Http404("No such old data")
    error, status = "", 200
    if request.method == "POST":
        try:
            old_data.delete_old_data(
                environment=environment,
                actor=request.user,
                operation_id=operation_id,
                confirmation=str(request.POST.get("confirmation", ""))[:40],
                origin=Origin.from_request(request),
            )
        except ServiceError as exc:
            error, status = exc.message, exc.status
        else:
            messages.success(request, f"The data of {entry.component} {entry.version} was deleted.")
            return redirect(reverse("stacks:environment", kwargs={"environment_id": environment.pk}))
    context = {"environment": environment, "entry": entry, "error": error}
    return render(request, "stacks/old_data_delete.html", context, status=status)


@login_required
@require_GET
def backup_download(request: AuthedRequest, backup_id: int) -> Any:
    """A database backup as a standard dump file, streamed from the repository."""

    backup = get_backup_for_user(request, backup_id, role=Role.ADMIN)
    try:
        filename, stream = backups.download(
            backup=backup, actor=request.user, origin=Origin.from_request(request)
        )
    except ServiceError as exc:
        return HttpResponse(exc.message, status=exc.status, content_type="text/plain")
    response = StreamingHttpResponse(
        stream, content_type=backups.CONTENT_TYPES.get(backup.kind, "application/octet-stream")
    )
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
