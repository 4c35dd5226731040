"""Celery tasks for billing: thin wrappers that carry ids and call one function."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="billing.record_usage_task", ignore_result=True)
def record_usage_task() -> int:
    from billing.metering import record_usage
    from billing.services import end_trials

    end_trials()
    return record_usage()


@shared_task(name="billing.generate_invoices_task", ignore_result=True)
def generate_invoices_task() -> int:
    from billing.invoices import generate_invoices
    from billing.services import mark_overdue

    mark_overdue()
    return generate_invoices()


@shared_task(
    name="billing.send_invoice_email_task", autoretry_for=(OSError,), retry_backoff=True, max_retries=5
)
def send_invoice_email_task(invoice_id: int) -> bool:
    from billing.emails import send_invoice_email
    from billing.models import Invoice

    invoice = Invoice.objects.select_related("organization").filter(pk=invoice_id).first()
    if invoice is None:
        return False
    return send_invoice_email(invoice)
