import django.utils.timezone
from django.db import migrations, models
from django.db.models import deletion


def remember_verified(apps, schema_editor):  # type: ignore[no-untyped-def]
    """Names held verified today are remembered, so their release keeps them from the HTTP proof."""
    DomainClaim = apps.get_model("stacks", "DomainClaim")
    VerifiedName = apps.get_model("stacks", "VerifiedName")
    VerifiedName.objects.bulk_create(
        [
            VerifiedName(
                hostname=c.hostname, organization_id=c.organization_id, first_verified_at=c.verified_at
            )
            for c in DomainClaim.objects.filter(verified_at__isnull=False)
        ],
        ignore_conflicts=True,
    )


class Migration(migrations.Migration):
    dependencies = [
        ("projects", "0001_initial"),
        ("stacks", "0015_backup_trigger_upload"),
    ]

    operations = [
        migrations.CreateModel(
            name="VerifiedName",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("hostname", models.CharField(max_length=253)),
                (
                    "first_verified_at",
                    models.DateTimeField(default=django.utils.timezone.now, editable=False),
                ),
                (
                    "organization",
                    models.ForeignKey(
                        null=True,
                        on_delete=deletion.SET_NULL,
                        related_name="+",
                        to="projects.organization",
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(
                        fields=("hostname", "organization"), name="verifiedname_unique_per_org"
                    )
                ],
            },
        ),
        migrations.RunPython(remember_verified, migrations.RunPython.noop),
    ]
