"""Every model registered in the admin lists, searches and opens for staff."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import reverse

from tests.conftest import client_for
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

MODELS = [(m._meta.app_label, m._meta.model_name) for m in admin.site._registry]


@pytest.fixture
def staff_client() -> Client:
    return client_for(UserFactory(is_staff=True, is_superuser=True))  # with a second factor


@pytest.mark.parametrize(("app", "model"), MODELS, ids=[f"{a}.{m}" for a, m in MODELS])
def test_changelist_and_search_open(staff_client: Client, app: str, model: str) -> None:
    url = reverse(f"admin:{app}_{model}_changelist")
    assert staff_client.get(url).status_code == 200
    assert staff_client.get(url, {"q": "x<script>"}).status_code == 200


def test_admin_is_not_for_customers() -> None:
    client = Client()
    client.force_login(UserFactory(), backend="django.contrib.auth.backends.ModelBackend")
    response = client.get("/admin/projects/organization/")
    assert response.status_code in (302, 403)
