"""The invoice document as HTML and as PDF, from one template (templates/billing/invoice_document.html)."""

from __future__ import annotations

from django.template.loader import render_to_string

from billing import invoices
from billing.models import Invoice


def invoice_html(invoice: Invoice) -> str:
    """A standalone HTML document (what WeasyPrint renders)."""
    return render_to_string("billing/invoice_pdf.html", invoices.invoice_context(invoice))


def invoice_pdf(invoice: Invoice) -> bytes:
    # WeasyPrint parses its stylesheets at import (0.6 s, and log lines in every process):
    # only a PDF needs it.
    from weasyprint import CSS, HTML  # noqa: PLC0415 - heavy import with side effects, PDF only

    stylesheet = CSS(string=render_to_string("billing/invoice_print.css"))
    return bytes(HTML(string=invoice_html(invoice)).write_pdf(stylesheets=[stylesheet]))
