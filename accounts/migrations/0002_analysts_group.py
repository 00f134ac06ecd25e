"""The "analysts" group, holding ``accounts.read_metrics``: whom ops add to let a user read metrics.

Existing users keep what they had in one case only: superusers (every permission). Staff and
other users get the group in the admin; the README says so.
"""

from django.db import migrations


def forwards(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    # Permissions are normally created after migrate (post_migrate): make this one now.
    content_type, _ = ContentType.objects.get_or_create(app_label="accounts", model="tokensession")
    permission, _ = Permission.objects.get_or_create(
        codename="read_metrics",
        content_type=content_type,
        defaults={"name": "Can read metrics (GET /metrics, dashboards)"},
    )
    group, _ = Group.objects.get_or_create(name="analysts")
    group.permissions.add(permission)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
