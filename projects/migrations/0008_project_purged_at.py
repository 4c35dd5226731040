from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("projects", "0007_project_deploy_key"),
    ]

    operations = [
        migrations.AddField(
            model_name="project",
            name="purged_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
