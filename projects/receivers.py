"""Signals from Django auth and allauth, recorded in the audit log (nothing else happens here)."""

from __future__ import annotations

from typing import Any

from allauth.account import signals as account_signals
from allauth.mfa import signals as mfa_signals
from django.apps import apps as installed_apps
from django.contrib.auth import signals as auth_signals
from django.db.models.signals import post_migrate
from django.dispatch import receiver

from projects.services import Origin, record_audit_event


@receiver(auth_signals.user_logged_in, dispatch_uid="audit_login")
def _login(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    record_audit_event(action="account.login", actor=user, origin=Origin.from_request(request))


@receiver(auth_signals.user_logged_out, dispatch_uid="audit_logout")
def _logout(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is not None:
        record_audit_event(action="account.logout", actor=user, origin=Origin.from_request(request))


@receiver(auth_signals.user_login_failed, dispatch_uid="audit_login_failed")
def _login_failed(sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any) -> None:
    # Django masks the password in ``credentials``; only the address tried is kept.
    tried = str(credentials.get("email") or credentials.get("username") or "")[:254]
    record_audit_event(action="account.login_failed", actor_email=tried, origin=Origin.from_request(request))


@receiver(account_signals.password_changed, dispatch_uid="audit_password_changed")
@receiver(account_signals.password_set, dispatch_uid="audit_password_set")
@receiver(account_signals.password_reset, dispatch_uid="audit_password_reset")
def _password(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    record_audit_event(action="account.password_changed", actor=user, origin=Origin.from_request(request))


@receiver(account_signals.email_confirmed, dispatch_uid="audit_email_confirmed")
def _email_confirmed(sender: Any, request: Any, email_address: Any, **kwargs: Any) -> None:
    record_audit_event(
        action="account.email_verified",
        actor=email_address.user,
        target=email_address.email,
        origin=Origin.from_request(request),
    )


@receiver(mfa_signals.authenticator_added, dispatch_uid="audit_mfa_added")
@receiver(mfa_signals.authenticator_removed, dispatch_uid="audit_mfa_removed")
@receiver(mfa_signals.authenticator_reset, dispatch_uid="audit_mfa_reset")
def _mfa(sender: Any, request: Any, user: Any, authenticator: Any, signal: Any, **kwargs: Any) -> None:
    change = {
        mfa_signals.authenticator_added: "added",
        mfa_signals.authenticator_removed: "removed",
        mfa_signals.authenticator_reset: "reset",
    }[signal]
    record_audit_event(
        action=f"account.mfa_{change}",
        actor=user,
        target=authenticator.type,
        origin=Origin.from_request(request),
    )


# --- staff groups ------------------------------------------------------------------------------
# Custom permissions (made by migration 0005, on the Organization content type) and the
# staff groups with what each may do. Model permissions of apps migrated later (billing)
# are granted here after every migrate, so the groups follow new models.
CUSTOM_PERMISSIONS = {
    "view_as_customer": "Can view the portal as a customer (read-only)",
    "start_demo": "Can start sales demos",
    "operate_stacks": "Can run support actions on customers' stacks",
}
CATALOG_MODELS = (
    "region",
    "kernelversion",
    "size",
    "component",
    "componentversion",
    "framework",
    "compatibilityrule",
    "stacktemplate",
    "stacktemplatecomponent",
)
# What each group's job needs, nothing more: Docker hosts (their engine URLs) are the
# operators' (superusers'); the catalog's capabilities, user and mounts are read-only in
# admin, and the runtime checks them against a fixed allowlist anyway (stacks.runtime.spec).
# Billing edits plans, prices, subscriptions, invoices and credits; usage is read-only.
BILLING_EDITS = (
    ("add", "plan"),
    ("change", "plan"),
    ("add", "pricelist"),
    ("change", "pricelist"),
    ("add", "price"),
    ("change", "price"),
    ("change", "subscription"),
    ("change", "invoice"),
    ("add", "adjustment"),
)
STAFF_GROUPS: dict[str, list[tuple[str, str]]] = {
    # (app label, codename); a codename "view_*" means every model's view permission of the app.
    "Support": [
        ("projects", "view_*"),
        ("stacks", "view_*"),
        ("billing", "view_*"),
        ("projects", "view_as_customer"),
        ("projects", "operate_stacks"),
    ],
    "Catalog managers": [
        *[("stacks", f"{verb}_{model}") for model in CATALOG_MODELS for verb in ("view", "add", "change")],
        ("stacks", "view_release"),
        ("stacks", "view_dockerhost"),
    ],
    "Billing": [
        ("billing", "view_*"),
        *[("billing", f"{verb}_{model}") for verb, model in BILLING_EDITS],
        ("projects", "view_organization"),
        ("projects", "view_project"),
        ("projects", "view_user"),
    ],
    "Sales": [
        ("projects", "start_demo"),
        ("projects", "view_organization"),
        ("stacks", "view_stacktemplate"),
    ],
}


def sync_staff_groups(apps: Any) -> None:
    """Create the staff groups and give each the permissions that exist now (idempotent)."""
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    # Also after a flush (tests), which drops permissions that no model's Meta declares.
    content_type, _ = apps.get_model("contenttypes", "ContentType").objects.get_or_create(
        app_label="projects", model="organization"
    )
    for codename, label in CUSTOM_PERMISSIONS.items():
        permission_model.objects.get_or_create(
            content_type=content_type, codename=codename, defaults={"name": label}
        )
    for name, wanted in STAFF_GROUPS.items():
        group, _ = group_model.objects.get_or_create(name=name)
        ids = []
        for app_label, codename in wanted:
            qs = permission_model.objects.filter(content_type__app_label=app_label)
            if codename.endswith("_*"):
                qs = qs.filter(codename__startswith=codename[:-1])
            else:
                qs = qs.filter(codename=codename)
            ids += list(qs.values_list("pk", flat=True))
        group.permissions.add(*ids)


@receiver(post_migrate, dispatch_uid="staff_groups")
def _staff_groups(sender: Any, apps: Any = None, **kwargs: Any) -> None:
    if sender.label not in ("projects", "stacks", "billing"):
        return
    if apps is None:
        # ``flush`` (transactional tests, support resets) sends post_migrate without the
        # migration state: the installed models are the current ones.
        apps = installed_apps
    try:
        apps.get_model("auth", "Group")
    except LookupError:
        return
    sync_staff_groups(apps)
