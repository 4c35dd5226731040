from django.urls import path

from billing import views

app_name = "billing"

urlpatterns = [
    path("orgs/<int:org_id>/billing/", views.overview, name="overview"),
    path("orgs/<int:org_id>/billing/plan/", views.change_plan, name="change_plan"),
    path("orgs/<int:org_id>/billing/invoices/<int:invoice_id>/", views.invoice, name="invoice"),
    path("orgs/<int:org_id>/billing/invoices/<int:invoice_id>/pdf/", views.invoice_pdf, name="invoice_pdf"),
]
