"""The public catalog page."""

from __future__ import annotations

from datetime import date

import pytest
from django.test import Client

from stacks.catalog.loader import load_catalog
from stacks.models import ComponentVersion, VersionStatus

pytestmark = pytest.mark.django_db


def test_catalog_page_is_public_and_lists_versions_with_status_and_eol() -> None:
    load_catalog()
    cv = ComponentVersion.objects.select_related("component").first()
    ComponentVersion.objects.filter(pk=cv.pk).update(status=VersionStatus.CURRENT, eol=date(2031, 1, 31))
    response = Client().get("/catalog/")
    assert response.status_code == 200
    page = response.content.decode()
    assert cv.component.name in page and "2031-01-31" in page and "current" in page
    assert "WordPress" in page and "Static site" in page


def test_catalog_page_empty_state() -> None:
    response = Client().get("/catalog/")
    assert response.status_code == 200
    assert b"The catalog is empty" in response.content


def test_catalog_page_escapes_failure_reasons() -> None:
    load_catalog()
    ComponentVersion.objects.filter(pk=ComponentVersion.objects.first().pk).update(
        failure_reason="<script>alert(1)</script>"
    )
    page = Client().get("/catalog/").content.decode()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page


def test_catalog_page_rejects_post() -> None:
    assert Client().post("/catalog/").status_code == 405


def test_catalog_page_query_count_does_not_grow(django_assert_max_num_queries) -> None:
    load_catalog()
    with django_assert_max_num_queries(8):
        Client().get("/catalog/")
