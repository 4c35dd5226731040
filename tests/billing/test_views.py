"""Customer billing pages: who sees what, plan changes, invoice downloads."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from django.urls import reverse

from billing import invoices, metering, services
from billing.models import Invoice, Plan, PriceList, Subscription
from tests.billing.conftest import make_plan, new_stack
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def billed(team: Any, prices: PriceList, time_machine: Any) -> Invoice:
    time_machine.move_to(datetime(2026, 5, 1, tzinfo=UTC), tick=False)
    make_plan("starter", is_default=True, monthly_price=Decimal("0"), max_cpus=Decimal("1"), max_projects=2)
    make_plan("team", monthly_price=Decimal("29"), max_cpus=Decimal("4"))
    services.start_trial(organization=team.org)
    new_stack(team.org, team.developer, template="static-site")
    time_machine.move_to(datetime(2026, 5, 1, 6, tzinfo=UTC), tick=False)
    metering.record_usage()
    invoice = invoices.generate_invoice(organization=team.org, year=2026, month=4)
    time_machine.move_to(datetime(2026, 5, 2, 12, tzinfo=UTC), tick=False)
    return invoice


def _url(name: str, org: Any, **kwargs: Any) -> str:
    return reverse(f"billing:{name}", kwargs={"org_id": org.pk, **kwargs})


def test_overview_shows_plan_usage_chart_estimate_and_invoices(team: Any, billed: Invoice) -> None:
    response = client_for(team.viewer).get(_url("overview", team.org))
    assert response.status_code == 200
    page = response.content.decode()
    assert "Starter" in page
    assert "<svg" in page and "<rect" in page and 'style="' not in page.split("<main", 1)[-1]
    assert billed.number in page
    assert "nearly used" not in page
    # On phones the quota, estimate and invoice tables stack, each cell named by data-label.
    for table in ("quotas", "estimate-lines", "invoices"):
        assert f'table-stack" id="{table}"' in page
    for label in (
        "Resource",
        "Used now",
        "Plan allows",
        "Estimated line",
        "Amount",
        "Number",
        "Period",
        "Total",
    ):
        assert f'data-label="{label}"' in page
    estimate = response.context["estimate"]
    # 0.25 CPU for 31 days (744 h) at 0.01, 0.25 GB at 0.004: 1.86 + 0.74 (6 hours of it metered).
    assert str(estimate.total_money) == "2.60 EUR"


def test_overview_htmx_renders_the_usage_partial(team: Any, billed: Invoice) -> None:
    response = client_for(team.viewer).get(_url("overview", team.org), HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    body = response.content.decode()
    assert body.lstrip().startswith('<section id="usage"') and "Refresh" in body
    assert "<html" not in body


def test_other_organizations_billing_answers_404(team: Any, billed: Invoice) -> None:
    client = client_for(team.outsider)
    for url in (
        _url("overview", team.org),
        _url("change_plan", team.org),
        _url("invoice", team.org, invoice_id=billed.pk),
        _url("invoice_pdf", team.org, invoice_id=billed.pk),
        # the outsider's own organization, someone else's invoice id
        _url("invoice", team.outsider_org, invoice_id=billed.pk),
    ):
        assert client.get(url).status_code == 404, url
    assert client.post(_url("change_plan", team.org), {"plan": "team"}).status_code == 404


def test_invoice_page_and_pdf_download(team: Any, billed: Invoice) -> None:
    client = client_for(team.viewer)
    page = client.get(_url("invoice", team.org, invoice_id=billed.pk))
    assert page.status_code == 200
    assert f"{billed.total} {billed.currency}" in page.content.decode()
    pdf = client.get(_url("invoice_pdf", team.org, invoice_id=billed.pk))
    assert pdf.status_code == 200
    assert pdf["Content-Type"] == "application/pdf"
    assert pdf["Content-Disposition"] == f'attachment; filename="invoice-{billed.number}.pdf"'
    assert pdf.content.startswith(b"%PDF-")
    assert client.post(_url("invoice", team.org, invoice_id=billed.pk)).status_code == 405


def test_viewer_sees_plans_but_only_admins_change(team: Any, billed: Invoice) -> None:
    assert client_for(team.viewer).get(_url("change_plan", team.org)).status_code == 200
    assert client_for(team.developer).post(_url("change_plan", team.org), {"plan": "team"}).status_code == 403
    response = client_for(team.admin).post(_url("change_plan", team.org), {"plan": "team"})
    assert response.status_code == 302
    assert response["Location"] == _url("overview", team.org)
    assert Subscription.objects.get(organization=team.org).plan.code == "team"


def test_downgrade_beyond_use_is_refused_with_the_reason(team: Any, billed: Invoice) -> None:
    Plan.objects.create(code="nano", name="Nano", max_cpus=Decimal("0.1"))
    client = client_for(team.owner)
    page = client.get(_url("change_plan", team.org)).content.decode()
    assert "Nano allows 0.1 CPUs; you use 0.25 now." in page
    response = client.post(_url("change_plan", team.org), {"plan": "nano"})
    assert response.status_code == 409
    assert "Nano allows 0.1 CPUs; you use 0.25 now." in response.content.decode()
    assert Subscription.objects.get(organization=team.org).plan.code == "starter"


def test_unknown_plan_is_a_form_error(team: Any, billed: Invoice) -> None:
    response = client_for(team.owner).post(_url("change_plan", team.org), {"plan": "gold"})
    assert response.status_code == 400


def test_billing_pages_need_sign_in(team: Any, billed: Invoice) -> None:
    from django.test import Client

    response = Client().get(_url("overview", team.org))
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


def test_nav_links_the_billing_page(team: Any, billed: Invoice) -> None:
    page = client_for(team.viewer).get(reverse("portal:dashboard")).content.decode()
    assert _url("overview", team.org) in page
