"""IP allowlist rules, managed by ops in the Django admin."""

from __future__ import annotations

import contextlib
import ipaddress

from django.core.exceptions import ValidationError
from django.db import models

from ingest.allowlist import network_normalize


def cidr_validate(value: str) -> None:
    """Refuse anything ``ipaddress.ip_network`` would not parse strictly (host bits set included)."""
    try:
        ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        raise ValidationError(
            "%(value)s is not a CIDR block (e.g. 10.0.0.0/8, 2001:db8::/32): %(reason)s",
            code="invalid_cidr",
            params={"value": value, "reason": str(exc)},
        ) from None


class AllowlistRule(models.Model):
    class Scope(models.TextChoices):
        INGEST = "ingest", "Event ingestion (POST /events)"
        ADMIN = "admin", "Django admin (/admin/)"
        API = "api", "API and dashboards (GET /metrics, /auth/*, /dashboards/, /api/docs)"

    cidr = models.CharField(
        max_length=64,
        validators=[cidr_validate],
        help_text="IPv4 or IPv6 network, e.g. 203.0.113.0/24 or 2001:db8::/48; a bare address means one host.",
    )
    scope = models.CharField(max_length=16, choices=Scope.choices, default=Scope.INGEST)
    enabled = models.BooleanField(default=True)
    note = models.CharField(max_length=255, blank=True, help_text="Who or what this rule is for.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["scope", "cidr"]
        constraints = [models.UniqueConstraint(fields=["cidr", "scope"], name="ingest_allowlistrule_cidr_scope")]

    def __str__(self) -> str:
        state = "" if self.enabled else " (disabled)"
        return f"{self.scope}: {self.cidr}{state}"

    def clean(self) -> None:
        # Store the canonical form, so "10.0.0.1", "10.0.0.1/32" and "::ffff:10.0.0.1" are one rule.
        with contextlib.suppress(ValueError):  # the field validator reports a bad one
            self.cidr = str(network_normalize(ipaddress.ip_network(self.cidr.strip(), strict=True)))
