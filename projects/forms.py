from __future__ import annotations

from django import forms

from projects.models import Role


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
