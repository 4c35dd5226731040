from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0003_backups"),
    ]

    operations = [
        migrations.AddField(
            model_name="plan",
            name="internet_egress",
            field=models.BooleanField(
                default=False,
                help_text="Containers may connect to the internet (takes effect at the next deploy)",
            ),
        ),
    ]
