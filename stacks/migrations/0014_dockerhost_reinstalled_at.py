from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("stacks", "0013_https_certificates"),
    ]

    operations = [
        migrations.AddField(
            model_name="dockerhost",
            name="reinstalled_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
