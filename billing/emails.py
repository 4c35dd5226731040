"""Invoice e-mails to the organization's owners, with the PDF attached."""

from __future__ import annotations

from django.conf import settings
from django.core.mail import EmailMessage
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from billing import invoices, render
from billing.models import Invoice
from projects.models import Membership, Role


def owner_addresses(invoice: Invoice) -> list[str]:
    return sorted(
        Membership.objects.filter(organization=invoice.organization, role=Role.OWNER)
        .exclude(user__email="")
        .values_list("user__email", flat=True)
    )


def send_invoice_email(invoice: Invoice) -> bool:
    """Mail the invoice once (claimed with a compare-and-set on ``emailed_at``; a failed
    send releases the claim so the task's retry can try again)."""
    recipients = owner_addresses(invoice)
    if not recipients:
        return False
    if not Invoice.objects.filter(pk=invoice.pk, emailed_at__isnull=True).update(emailed_at=timezone.now()):
        return False
    url = settings.STACKPORT_BASE_URL + reverse(
        "billing:invoice", kwargs={"org_id": invoice.organization_id, "invoice_id": invoice.pk}
    )
    context = {**invoices.invoice_context(invoice), "url": url}
    subject = render_to_string("billing/email/invoice_subject.txt", context).strip()
    body = render_to_string("billing/email/invoice_message.txt", context)
    message = EmailMessage(subject, body, None, recipients)
    try:
        message.attach(f"invoice-{invoice.number}.pdf", render.invoice_pdf(invoice), "application/pdf")
        message.send()
    except Exception:
        Invoice.objects.filter(pk=invoice.pk).update(emailed_at=None)
        raise
    return True
