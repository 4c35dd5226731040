"""Organization pages: members, invitations, audit log. Thin: access helper, one service, render."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from allauth.account import views as account_views
from allauth.mfa.totp import views as totp_views
from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import NON_FIELD_ERRORS
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from projects import services
from projects.access import (
    AuthedRequest,
    get_invitation_of_org,
    get_member_of_org,
    get_membership_for_user,
    set_current_organization,
)
from projects.forms import (
    AuditSearchForm,
    InviteForm,
    OrganizationForm,
    RoleForm,
    SwitchOrganizationForm,
    attempt,
)
from projects.models import ApiToken, AuditEvent, Membership, Role, User
from projects.services import Origin


def _org_url(membership: Membership) -> str:
    return reverse("projects:organization", kwargs={"org_id": membership.organization_id})


@login_required
@require_http_methods(["GET", "POST"])
def organization_create(request: AuthedRequest) -> HttpResponse:
    form = OrganizationForm(request.POST if request.method == "POST" else None)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            org, status = attempt(
                form,
                lambda: services.create_organization(
                    name=form.cleaned_data["name"], owner=request.user, origin=Origin.from_request(request)
                ),
            )
            if org:
                set_current_organization(request, org.memberships.get(user=request.user))
                messages.success(request, f"Created {org.name}. You are its owner.")
                return redirect("projects:organization", org_id=org.pk)
    return render(request, "projects/organization_create.html", {"form": form}, status=status)


@login_required
@require_POST
def organization_switch(request: AuthedRequest) -> HttpResponse:
    form = SwitchOrganizationForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose an organization from the list.")
        return redirect("portal:dashboard", permanent=False)
    membership = get_membership_for_user(request, form.cleaned_data["organization"])
    set_current_organization(request, membership)
    messages.info(request, f"You are now working in {membership.organization.name}.")
    return redirect("portal:dashboard")


@login_required
@require_http_methods(["GET", "POST"])
def organization_detail(request: AuthedRequest, org_id: int) -> HttpResponse:
    """Members and invitations; admins rename the organization here too."""
    membership = get_membership_for_user(request, org_id)
    org = membership.organization
    form = OrganizationForm(request.POST if request.method == "POST" else None, initial={"name": org.name})
    status = 200
    if request.method == "POST":
        membership = get_membership_for_user(request, org_id, role=Role.ADMIN)
        status = 400
        if form.is_valid():
            done, status = attempt(
                form,
                lambda: services.rename_organization(
                    organization=org,
                    name=form.cleaned_data["name"],
                    actor=request.user,
                    origin=Origin.from_request(request),
                ),
            )
            if done:
                messages.success(request, "Organization renamed.")
                return redirect(_org_url(membership))
    return render(
        request,
        "projects/organization_detail.html",
        {
            "membership": membership,
            "organization": org,
            "form": form,
            "members": org.memberships.select_related("user").order_by("created_at"),
            "invitations": org.invitations.pending().select_related("invited_by"),
            "invite_form": InviteForm(),
            "roles": Role.choices,
            "can_manage": membership.has_role(Role.ADMIN),
        },
        status=status,
    )


@login_required
@require_http_methods(["GET", "POST"])
def member_invite(request: AuthedRequest, org_id: int) -> HttpResponse:
    membership = get_membership_for_user(request, org_id, role=Role.ADMIN)
    form = InviteForm(request.POST if request.method == "POST" else None)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            invitation, status = attempt(
                form,
                lambda: services.invite_member(
                    organization=membership.organization,
                    email=form.cleaned_data["email"],
                    role=form.cleaned_data["role"],
                    actor=request.user,
                    origin=Origin.from_request(request),
                ),
            )
            if invitation:
                messages.success(request, f"Invitation sent to {invitation.email}.")
                return redirect(_org_url(membership))
    return render(
        request,
        "projects/member_invite.html",
        {"membership": membership, "organization": membership.organization, "form": form},
        status=status,
    )


@login_required
@require_POST
def invitation_revoke(request: AuthedRequest, org_id: int, invitation_id: int) -> HttpResponse:
    membership = get_membership_for_user(request, org_id, role=Role.ADMIN)
    invitation = get_invitation_of_org(membership, invitation_id)
    services.revoke_invitation(invitation=invitation, actor=request.user, origin=Origin.from_request(request))
    messages.success(request, f"Invitation to {invitation.email} withdrawn.")
    return redirect(_org_url(membership))


@login_required
@require_POST
def member_role(request: AuthedRequest, org_id: int, member_id: int) -> HttpResponse:
    membership = get_membership_for_user(request, org_id, role=Role.ADMIN)
    member = get_member_of_org(membership, member_id)
    form = RoleForm(request.POST)
    if form.is_valid():
        done, status = attempt(
            form,
            lambda: services.change_member_role(
                membership=member,
                role=form.cleaned_data["role"],
                actor=request.user,
                origin=Origin.from_request(request),
            ),
        )
        if done:
            messages.success(request, f"{member.user.email} is now {done.get_role_display().lower()}.")
            return redirect(_org_url(membership))
    else:
        status = 400
    return _form_error_page(request, membership, form, status)


@login_required
@require_http_methods(["GET", "POST"])
def member_remove(request: AuthedRequest, org_id: int, member_id: int) -> HttpResponse:
    membership = get_membership_for_user(request, org_id)
    member = get_member_of_org(membership, member_id)
    # Decided before the call: deleting the row sets ``member.pk`` to None.
    leaving = member.pk == membership.pk
    if not leaving:
        membership = get_membership_for_user(request, org_id, role=Role.ADMIN)
    # Bound on every POST, even an empty one (htmx sends the CSRF token as a header), so
    # a refusal can be added to it.
    form = forms.Form(request.POST if request.method == "POST" else None)
    status = 200
    if request.method == "POST":
        done, status = attempt(
            form,
            lambda: (
                services.remove_member(
                    membership=member, actor=request.user, origin=Origin.from_request(request)
                )
                or True
            ),
        )
        if done:
            if leaving:
                messages.success(request, f"You left {membership.organization.name}.")
                return redirect("portal:dashboard")
            messages.success(request, f"{member.user.email} was removed.")
            return redirect(_org_url(membership))
    return render(
        request,
        "projects/member_remove.html",
        {
            "membership": membership,
            "organization": membership.organization,
            "member": member,
            "form": form,
            "leaving": leaving,
        },
        status=status,
    )


def _form_error_page(
    request: HttpRequest, membership: Membership, form: forms.Form, status: int
) -> HttpResponse:
    return render(
        request,
        "projects/form_error.html",
        {"membership": membership, "organization": membership.organization, "form": form},
        status=status,
    )


@login_required
@require_http_methods(["GET"])
def audit_log(request: AuthedRequest, org_id: int) -> HttpResponse:
    membership = get_membership_for_user(request, org_id, role=Role.ADMIN)
    form = AuditSearchForm(request.GET or None)
    events = AuditEvent.objects.filter(organization_id=membership.organization_id).select_related("actor")
    if form.is_valid() and form.cleaned_data["q"]:
        q = form.cleaned_data["q"]
        events = events.filter(Q(action__icontains=q) | Q(actor_email__icontains=q) | Q(target__icontains=q))
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    template = (
        "projects/audit_log.html#events"
        if request.htmx and not request.htmx.boosted
        else "projects/audit_log.html"
    )
    return render(
        request,
        template,
        {"membership": membership, "organization": membership.organization, "form": form, "page": page},
    )


@require_http_methods(["GET", "POST"])
def invitation(request: HttpRequest, token: str) -> HttpResponse:
    """The link from the e-mail. Anyone with the link sees what it is; accepting needs the invited address."""
    invite = services.invitation_from_token(token)
    if invite is None:
        return render(request, "projects/invitation.html", {"invalid": True}, status=404)
    # Bound on every POST, even an empty one (htmx sends the CSRF token as a header), so
    # a refusal can be added to it.
    form = forms.Form(request.POST if request.method == "POST" else None)
    status = 200 if invite.status == "pending" else 410
    if request.method == "POST":
        if not request.user.is_authenticated:
            return redirect(f"{reverse('account_login')}?next={request.path}")
        user = cast(User, request.user)  # signed in: checked just above
        membership, status = attempt(
            form,
            lambda: services.accept_invitation(
                invitation=invite, user=user, origin=Origin.from_request(request)
            ),
        )
        if membership:
            set_current_organization(request, membership)
            messages.success(request, f"Welcome to {invite.organization.name}.")
            return redirect("portal:dashboard")
    return render(request, "projects/invitation.html", {"invitation": invite, "form": form}, status=status)


# --- allauth views: 400 for a form with errors, 429 when throttled (the library answers 200) ---
def _bad_request_on_invalid(view_class: type) -> Callable[..., HttpResponse]:
    class View(view_class):  # type: ignore[valid-type,misc]
        def form_invalid(self, form: forms.Form) -> HttpResponse:
            response = super().form_invalid(form)
            throttled = form.has_error(NON_FIELD_ERRORS, "too_many_login_attempts")
            response.status_code = 429 if throttled else 400
            return response

    View.__name__ = view_class.__name__
    return View.as_view()


login = _bad_request_on_invalid(account_views.LoginView)
signup = _bad_request_on_invalid(account_views.SignupView)
password_change = _bad_request_on_invalid(account_views.PasswordChangeView)
password_reset = _bad_request_on_invalid(account_views.PasswordResetView)
password_reset_from_key = _bad_request_on_invalid(account_views.PasswordResetFromKeyView)
email = _bad_request_on_invalid(account_views.EmailView)
totp_activate = _bad_request_on_invalid(totp_views.ActivateTOTPView)


# --- API tokens ---------------------------------------------------------------------------------
class ApiTokenForm(forms.Form):
    EXPIRY_CHOICES = [("30", "30 days"), ("90", "90 days"), ("365", "1 year"), ("", "Never")]

    name = forms.CharField(
        max_length=100, label="Name", help_text="What the token is for, e.g. “deploy script”."
    )
    organization = forms.TypedChoiceField(
        coerce=int,
        required=False,
        empty_value=None,
        label="Organization",
        help_text="Limit the token to one.",
    )
    read_only = forms.BooleanField(required=False, label="Read only (GET requests only)")
    expires_in_days = forms.TypedChoiceField(
        choices=EXPIRY_CHOICES, coerce=int, required=False, empty_value=None, initial="90", label="Expires"
    )

    def __init__(self, *args: Any, user: User, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.memberships = list(Membership.objects.select_related("organization").filter(user=user))
        self.fields["organization"].choices = [("", "All my organizations")] + [  # type: ignore[attr-defined]
            (m.organization_id, m.organization.name) for m in self.memberships
        ]

    def chosen_organization(self) -> Any:
        chosen = self.cleaned_data.get("organization")
        return next((m.organization for m in self.memberships if m.organization_id == chosen), None)


@login_required
@require_http_methods(["GET", "POST"])
def api_tokens(request: AuthedRequest) -> HttpResponse:
    """The user's API tokens; a new one's secret is shown on this response only."""
    form = ApiTokenForm(request.POST if request.method == "POST" else None, user=request.user)
    status, secret = 200, None
    if request.method == "POST":
        status = 400
        if form.is_valid():
            created, status = attempt(
                form,
                lambda: services.create_api_token(
                    user=request.user,
                    name=form.cleaned_data["name"],
                    organization=form.chosen_organization(),
                    read_only=form.cleaned_data["read_only"],
                    expires_in_days=form.cleaned_data["expires_in_days"],
                    origin=Origin.from_request(request),
                ),
            )
            if created:
                secret = created[1]
                status = 201
                form = ApiTokenForm(user=request.user)
    tokens = ApiToken.objects.filter(user=request.user).select_related("organization")
    response = render(
        request,
        "projects/api_tokens.html",
        {"form": form, "tokens": tokens, "secret": secret},
        status=status,
    )
    response["Cache-Control"] = "no-store"  # the secret must not stay in a cache
    return response


@login_required
@require_POST
def api_token_revoke(request: AuthedRequest, token_id: int) -> HttpResponse:
    token = get_object_or_404(ApiToken, pk=token_id, user=request.user)
    services.revoke_api_token(token=token, actor=request.user, origin=Origin.from_request(request))
    messages.success(request, f"Token “{token.name}” revoked.")
    return redirect("projects:api_tokens")
