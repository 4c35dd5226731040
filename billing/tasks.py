"""Celery tasks for billing: thin wrappers that carry ids and call one function."""

from __future__ import annotations

from celery import shared_task

from billing import emails, invoices, metering, services
from billing.models import Invoice


@shared_task(name="billing.record_usage_task", ignore_result=True)
def record_usage_task() -> int:
    services.end_trials()
    return metering.record_usage()


@shared_task(name="billing.generate_invoices_task", ignore_result=True)
def generate_invoices_task() -> int:
    services.mark_overdue()
    return invoices.generate_invoices()


@shared_task(
    name="billing.send_invoice_email_task", autoretry_for=(OSError,), retry_backoff=True, max_retries=5
)
def send_invoice_email_task(invoice_id: int) -> bool:
    invoice = Invoice.objects.select_related("organization").filter(pk=invoice_id).first()
    if invoice is None:
        return False
    return emails.send_invoice_email(invoice)
