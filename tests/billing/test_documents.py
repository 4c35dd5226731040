"""The invoice as HTML and PDF from one template, and its e-mail to the owners."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from django.core import mail

from billing import invoices, metering, services
from billing.models import Invoice, PriceList
from billing.render import invoice_html, invoice_pdf
from tests.billing.conftest import make_plan, new_stack
from tests.billing.pdftext import pdf_text
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def invoice(team: Any, prices: PriceList, time_machine: Any) -> Invoice:
    time_machine.move_to(datetime(2026, 5, 1, tzinfo=UTC), tick=False)
    make_plan("team", is_default=True, monthly_price=Decimal("19.90"))
    services.start_trial(organization=team.org)
    new_stack(team.org, team.developer, name="Shop <&> Co", template="lamp")
    time_machine.move_to(datetime(2026, 5, 3, tzinfo=UTC), tick=False)
    metering.record_usage()
    services.add_adjustment(
        organization=team.org,
        actor=UserFactory(is_staff=True),
        kind="charge",
        amount="2.5",
        description="Setup help",
    )
    time_machine.move_to(datetime(2026, 6, 1, 2, tzinfo=UTC), tick=False)
    return invoices.generate_invoice(organization=team.org, year=2026, month=5)


def test_pdf_text_matches_the_html_totals(invoice: Invoice) -> None:
    html = invoice_html(invoice)
    totals = {
        name: re.search(rf'id="invoice-{name}">([^<]+)<', html).group(1)  # type: ignore[union-attr]
        for name in ("subtotal", "total")
    }
    # 48 hours of 0.75 CPU, 0.75 GB, 1 GB: 0.36 + 0.144 (0.14) + 0.0096 (0.01) + 19.90 + 2.50
    assert totals == {"subtotal": "22.91 EUR", "total": "22.91 EUR"}
    pdf = invoice_pdf(invoice)
    assert pdf.startswith(b"%PDF-")
    text = pdf_text(pdf)
    assert f"Invoice {invoice.number}" in text
    assert f"Subtotal {totals['subtotal']}" in text
    assert f"Total {totals['total']}" in text
    assert "Shop <&> Co: CPU (eu-central)" in text
    assert "Shop &lt;&amp;&gt; Co" in html  # escaped in HTML, exact in the PDF
    for line in invoice.lines.all():
        assert str(line.amount) in text


def test_invoice_is_mailed_once_to_the_owners_with_the_pdf(
    team: Any, prices: PriceList, time_machine: Any, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = True
    time_machine.move_to(datetime(2026, 5, 1, tzinfo=UTC), tick=False)
    make_plan("team", is_default=True, monthly_price=Decimal("10"))
    services.start_trial(organization=team.org)
    time_machine.move_to(datetime(2026, 6, 1, 2, tzinfo=UTC), tick=False)
    with django_capture_on_commit_callbacks(execute=True):
        invoice = invoices.generate_invoice(organization=team.org, year=2026, month=5)
    with django_capture_on_commit_callbacks(execute=True):
        invoices.generate_invoice(organization=team.org, year=2026, month=5)
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == [team.owner.email]
    assert "10.00 EUR" in message.subject
    assert f"/orgs/{team.org.pk}/billing/invoices/{invoice.pk}/" in message.body
    (name, content, mimetype) = message.attachments[0]
    assert (name, mimetype) == (f"invoice-{invoice.number}.pdf", "application/pdf")
    assert "Total 10.00 EUR" in pdf_text(content)
    invoice.refresh_from_db()
    assert invoice.emailed_at is not None
