"""The ``api`` scope, and existing rules keeping their effect.

* Rules written as IPv4-mapped IPv6 (``::ffff:10.0.0.0/104``) never matched (addresses were
  normalised to IPv4, rules were not): they are rewritten to the IPv4 network they name, which is
  what whoever added them meant. A rule whose IPv4 form already exists in its scope is dropped.
* The dashboards and GET /metrics are allowlisted now (the ``api`` scope, on by default). Who
  could reach the admin (its rules) keeps reaching the dashboards: each admin rule is copied to
  ``api``. Ops add api rules for other analysts' networks.
"""

import ipaddress

from django.db import migrations, models

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _normalised(cidr):
    # A copy of ingest.allowlist.network_normalize as it is today: migrations never change.
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96 and network.subnet_of(_MAPPED):
        return str(ipaddress.IPv4Network((int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96)))
    return None


def forwards(apps, schema_editor):
    AllowlistRule = apps.get_model("ingest", "AllowlistRule")
    for rule in AllowlistRule.objects.all():
        cidr = _normalised(rule.cidr)
        if cidr is None:
            continue
        if AllowlistRule.objects.filter(scope=rule.scope, cidr=cidr).exists():
            rule.delete()
        else:
            rule.cidr = cidr
            rule.save(update_fields=["cidr"])
    existing = set(AllowlistRule.objects.filter(scope="api").values_list("cidr", flat=True))
    for rule in AllowlistRule.objects.filter(scope="admin"):
        if rule.cidr not in existing:
            note = f"copied from the admin scope: {rule.note}" if rule.note else "copied from the admin scope"
            AllowlistRule.objects.create(cidr=rule.cidr, scope="api", enabled=rule.enabled, note=note[:255])


class Migration(migrations.Migration):
    dependencies = [
        ("ingest", "0001_initial"),
    ]

    operations = [
        migrations.AlterField(
            model_name="allowlistrule",
            name="scope",
            field=models.CharField(
                choices=[
                    ("ingest", "Event ingestion (POST /events)"),
                    ("admin", "Django admin (/admin/)"),
                    ("api", "API and dashboards (GET /metrics, /auth/*, /dashboards/, /api/docs)"),
                ],
                default="ingest",
                max_length=16,
            ),
        ),
        migrations.RunPython(forwards, migrations.RunPython.noop),
    ]
