from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms

from projects.models import Role
from projects.services import ServiceError


class OrganizationForm(forms.Form):
    name = forms.CharField(max_length=100, label="Organization name")


class InviteForm(forms.Form):
    email = forms.EmailField(label="E-mail address")
    role = forms.ChoiceField(choices=Role.choices, initial=Role.DEVELOPER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class SwitchOrganizationForm(forms.Form):
    organization = forms.IntegerField(min_value=1)


class AuditSearchForm(forms.Form):
    q = forms.CharField(required=False, max_length=100, label="Search")


def attempt(form: forms.Form, call: Callable[[], Any]) -> tuple[Any, int]:
    """Run a service call for a view; a refusal becomes a form error (next to its field
    when the form has it) and the HTTP status to answer with."""
    try:
        return call(), 200
    except ServiceError as exc:
        field = exc.field if exc.field in form.fields else None
        form.add_error(field, exc.message)
        return None, exc.status
