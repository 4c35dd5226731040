from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("stacks", "0010_template_mounts"),
    ]

    operations = [
        migrations.AddField(
            model_name="domain",
            name="strip_prefix",
            field=models.BooleanField(
                default=False,
                help_text="Remove the path prefix before the request reaches the app (/shop/cart arrives as /cart)",
            ),
        ),
    ]
