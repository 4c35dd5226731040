"""Support's custom permissions and the staff groups (their model permissions are granted
by projects.receivers after every migrate: billing's models may come later)."""

from typing import Any

from django.db import migrations

PERMISSIONS = {
    "view_as_customer": "Can view the portal as a customer (read-only)",
    "start_demo": "Can start sales demos",
    "operate_stacks": "Can run support actions on customers' stacks",
}
GROUPS = {
    "Support": ["view_as_customer", "operate_stacks"],
    "Catalog managers": [],
    "Billing": [],
    "Sales": ["start_demo"],
}


def forwards(apps: Any, schema_editor: Any) -> None:
    content_type_model = apps.get_model("contenttypes", "ContentType")
    permission_model = apps.get_model("auth", "Permission")
    group_model = apps.get_model("auth", "Group")
    content_type, _ = content_type_model.objects.get_or_create(app_label="projects", model="organization")
    made = {}
    for codename, name in PERMISSIONS.items():
        made[codename], _ = permission_model.objects.get_or_create(
            content_type=content_type, codename=codename, defaults={"name": name}
        )
    for group_name, codenames in GROUPS.items():
        group, _ = group_model.objects.get_or_create(name=group_name)
        group.permissions.add(*(made[c] for c in codenames))


def backwards(apps: Any, schema_editor: Any) -> None:
    apps.get_model("auth", "Permission").objects.filter(
        content_type__app_label="projects", codename__in=list(PERMISSIONS)
    ).delete()
    apps.get_model("auth", "Group").objects.filter(name__in=list(GROUPS)).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("projects", "0004_tokens_suspension_demos"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
