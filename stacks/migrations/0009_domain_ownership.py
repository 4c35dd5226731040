"""Custom domains need proof of control (docs/domains.md): each organization's claim on a host
name is a DomainClaim, and a domain is routed only when its claim is verified.

Domains that exist already keep serving: for each host name the organization that added it
first gets a claim marked verified ("existing"); any other organization sharing that host (a
split by path prefix, no longer allowed) gets a pending claim and is no longer routed until it
proves control, which it cannot while the first one holds the name.

Not atomic as a whole: the data step commits before the column becomes NOT NULL (PostgreSQL
refuses to alter a table with pending deferred foreign-key checks in the same transaction)."""

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models

import stacks.models


def claims_for_existing_domains(apps, schema_editor):
    Domain = apps.get_model("stacks", "Domain")
    DomainClaim = apps.get_model("stacks", "DomainClaim")
    now = django.utils.timezone.now()
    owners = {}
    for domain in Domain.objects.select_related("environment__project").order_by("created_at", "pk"):
        organization_id = domain.environment.project.organization_id
        owner = owners.setdefault(domain.hostname, organization_id)
        claim, _ = DomainClaim.objects.get_or_create(
            organization_id=organization_id,
            hostname=domain.hostname,
            defaults={
                "verified_at": now if owner == organization_id else None,
                "method": "existing" if owner == organization_id else "",
            },
        )
        Domain.objects.filter(pk=domain.pk).update(claim=claim)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("projects", "0005_staff_permissions_groups"),
        ("stacks", "0008_backups"),
    ]

    operations = [
        migrations.CreateModel(
            name="DomainClaim",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("hostname", models.CharField(max_length=253)),
                (
                    "token",
                    models.CharField(default=stacks.models.new_claim_token, editable=False, max_length=64),
                ),
                ("verified_at", models.DateTimeField(blank=True, null=True)),
                (
                    "method",
                    models.CharField(
                        blank=True,
                        choices=[
                            ("dns", "DNS TXT record"),
                            ("support", "Marked verified by support"),
                            ("existing", "Routed before verification existed"),
                            ("trusted", "Verification off (single-tenant install)"),
                        ],
                        max_length=10,
                    ),
                ),
                ("last_checked_at", models.DateTimeField(blank=True, null=True)),
                ("check_error", models.CharField(blank=True, max_length=300)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now, editable=False)),
                (
                    "organization",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="domain_claims",
                        to="projects.organization",
                    ),
                ),
            ],
            options={
                "ordering": ["hostname"],
                "indexes": [
                    models.Index(fields=["verified_at", "last_checked_at"], name="domainclaim_pending")
                ],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("organization", "hostname"), name="domainclaim_unique_per_org"
                    ),
                    models.UniqueConstraint(
                        condition=models.Q(("verified_at__isnull", False)),
                        fields=("hostname",),
                        name="domainclaim_one_verified_owner",
                    ),
                ],
            },
        ),
        migrations.AddField(
            model_name="domain",
            name="claim",
            field=models.ForeignKey(
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="domains",
                to="stacks.domainclaim",
            ),
        ),
        migrations.RunPython(claims_for_existing_domains, migrations.RunPython.noop, atomic=True),
        migrations.AlterField(
            model_name="domain",
            name="claim",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="domains", to="stacks.domainclaim"
            ),
        ),
        migrations.RemoveConstraint(model_name="domain", name="domain_unique_route"),
        migrations.AddConstraint(
            model_name="domain",
            constraint=models.UniqueConstraint(
                fields=("claim", "path_prefix"), name="domain_unique_claim_route"
            ),
        ),
    ]
