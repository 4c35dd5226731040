"""The invoice document as HTML and as PDF, from one template (templates/billing/invoice_document.html)."""

from __future__ import annotations

from django.template.loader import render_to_string

from billing.invoices import invoice_context
from billing.models import Invoice


def invoice_html(invoice: Invoice) -> str:
    """A standalone HTML document (what WeasyPrint renders)."""
    return render_to_string("billing/invoice_pdf.html", invoice_context(invoice))


def invoice_pdf(invoice: Invoice) -> bytes:
    from weasyprint import CSS, HTML

    stylesheet = CSS(string=render_to_string("billing/invoice_print.css"))
    return bytes(HTML(string=invoice_html(invoice)).write_pdf(stylesheets=[stylesheet]))
