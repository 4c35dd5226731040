"""Payment providers, chosen by ``STACKPORT_PAYMENT_BACKEND`` (a dotted path), like
Django's e-mail backends. A backend never touches the database: what it needs to keep
comes back as JSON, which the caller stores on the invoice (``Invoice.payment_state``).

Only "pay by invoice" ships: no payment provider is reachable from here. A card or
direct-debit provider is a subclass that starts a checkout and confirms it from the
provider's webhook, then calls ``billing.services.mark_invoice_paid``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

from billing.models import Invoice


class PaymentBackend:
    """The interface every payment provider implements."""

    #: Whether the customer can pay online (shows a "Pay now" button).
    online = False

    def instructions(self, invoice: Invoice) -> str:
        """How to pay ``invoice``, printed on it (HTML and PDF) and in its e-mail."""
        raise NotImplementedError

    def start_payment(self, invoice: Invoice, *, return_url: str) -> dict[str, Any]:
        """Begin paying ``invoice``: returns the provider's state (e.g. a checkout id) and,
        under ``"redirect"``, where to send the customer. Safe to call again."""
        raise NotImplementedError

    def payment_status(self, invoice: Invoice, state: dict[str, Any]) -> str:
        """ "pending", "paid" or "failed", as the provider knows it from ``state``."""
        raise NotImplementedError


class PayByInvoiceBackend(PaymentBackend):
    """The customer transfers the total; billing staff mark the invoice paid in admin."""

    def instructions(self, invoice: Invoice) -> str:
        return (
            f"{settings.STACKPORT_PAYMENT_INSTRUCTIONS} Reference: {invoice.number}. "
            f"Due on {invoice.due_on:%d %B %Y}."
        )

    def start_payment(self, invoice: Invoice, *, return_url: str) -> dict[str, Any]:
        return {"method": "bank-transfer", "reference": invoice.number}

    def payment_status(self, invoice: Invoice, state: dict[str, Any]) -> str:
        return "pending"  # only staff know when the transfer arrived


@lru_cache(maxsize=4)
def _load(path: str) -> PaymentBackend:
    backend = import_string(path)()
    if not isinstance(backend, PaymentBackend):
        raise TypeError(f"{path} is not a billing.payments.PaymentBackend")
    return backend


def get_backend() -> PaymentBackend:
    """The configured backend (resolved once per dotted path)."""
    return _load(str(settings.STACKPORT_PAYMENT_BACKEND))
