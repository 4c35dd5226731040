"""Staff groups get only what their job needs: catalog managers no longer add or change
Docker hosts (engine URLs are the operators'), billing staff no longer add or change usage,
metering intervals, invoice lines, invoices or subscriptions by hand (projects.receivers
grants the rest after every migrate and never takes a permission away, hence this step)."""

from typing import Any

from django.db import migrations

REMOVED = {
    "Catalog managers": [("stacks", "add_dockerhost"), ("stacks", "change_dockerhost")],
    "Billing": [
        ("billing", "add_usagerecord"),
        ("billing", "change_usagerecord"),
        ("billing", "add_meteringinterval"),
        ("billing", "change_meteringinterval"),
        ("billing", "add_invoiceline"),
        ("billing", "change_invoiceline"),
        ("billing", "add_invoice"),
        ("billing", "add_subscription"),
        ("billing", "add_planperiod"),
        ("billing", "change_planperiod"),
    ],
}


def forwards(apps: Any, schema_editor: Any) -> None:
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    for name, permissions in REMOVED.items():
        group = group_model.objects.filter(name=name).first()
        if group is None:
            continue
        for app_label, codename in permissions:
            group.permissions.remove(
                *permission_model.objects.filter(content_type__app_label=app_label, codename=codename)
            )


class Migration(migrations.Migration):
    dependencies = [("projects", "0005_staff_permissions_groups")]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
