"""Billing forms: the customer's plan choice."""

from __future__ import annotations

from typing import Any, cast

from django import forms

from billing.models import Plan


class ChangePlanForm(forms.Form):
    plan = forms.ChoiceField(label="Plan")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["plan"]).choices = [
            (p.code, p.name) for p in Plan.objects.filter(is_public=True)
        ]
