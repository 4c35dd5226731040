from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("stacks", "0011_domain_strip_prefix"),
    ]

    operations = [
        migrations.AddField(
            model_name="release",
            name="build_key",
            field=models.CharField(blank=True, max_length=64),
        ),
    ]
