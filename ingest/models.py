"""IP allowlist rules, managed by ops in the Django admin."""

from __future__ import annotations

import contextlib
import ipaddress
import re
import secrets

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


def write_key_generate() -> str:
    """A public key: not a secret (it sits in the site's pages), but unguessable, so that keys
    cannot be enumerated; ``wk_`` says what it is when one turns up in a log or a ticket."""
    return "wk_" + secrets.token_urlsafe(18)


def origins_validate(value: str) -> None:
    for origin in origins_parse(value):
        if not ORIGIN_RE.fullmatch(origin):
            raise ValidationError(
                "%(origin)s is not an origin: scheme://host[:port], e.g. https://www.example.com "
                "(no path; https://*.example.com for every subdomain)",
                code="invalid_origin",
                params={"origin": origin},
            )


def origins_parse(value: str) -> list[str]:
    """One origin per line (or comma separated), lower-cased, without a trailing slash."""
    return [part.strip().rstrip("/").lower() for part in value.replace(",", "\n").splitlines() if part.strip()]


# scheme://host[:port], the host optionally starting with "*." (every subdomain of it).
ORIGIN_RE = re.compile(r"https?://(\*\.)?[a-z0-9-]+(\.[a-z0-9-]+)*(:[0-9]{1,5})?")


class WriteKey(models.Model):
    """A site's public key for browser ingest (the player SDK's ``writeKey``).

    Browsers post from anywhere, so the IP allowlist cannot guard them: a request carrying a write
    key is admitted by the key instead (known, not revoked, from one of its origins, within its
    own rate limit). Server-to-server ingest without a key keeps the IP allowlist.
    """

    name = models.CharField(max_length=100, help_text="The site or app, e.g. 'www.example.com web player'.")
    key = models.CharField(max_length=64, unique=True, default=write_key_generate, editable=False)
    allowed_origins = models.TextField(
        validators=[origins_validate],
        help_text="One origin per line, e.g. https://www.example.com; https://*.example.com admits every "
        "subdomain. Requests from other origins are refused (and get no CORS headers).",
    )
    rate_limit_requests = models.PositiveIntegerField(
        default=100,
        help_text="Requests per window (INGEST_RATE_LIMIT_WINDOW_SECONDS) for all clients of this key together; "
        "0: no limit of its own.",
    )
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.key}{', revoked' if self.revoked_at else ''})"

    def clean(self) -> None:
        self.allowed_origins = "\n".join(origins_parse(self.allowed_origins))
