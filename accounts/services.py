"""Token sessions: issue, rotate, revoke, prune (the rules are in accounts/models.py's docstring)."""

from __future__ import annotations

import functools
import uuid
from datetime import UTC, datetime
from typing import Any

from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone
from rest_framework import status
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.tokens import RefreshToken

from accounts.models import READ_METRICS, TokenSession
from accounts.throttle import LoginThrottled
from analytics_platform.errors import ApplicationError

_BEARER = {"WWW-Authenticate": 'Bearer realm="api"'}


def _unauthorized(message: str, code: str) -> ApplicationError:
    return ApplicationError(message, code=code, status_code=status.HTTP_401_UNAUTHORIZED, headers=_BEARER)


def _expiry(token: RefreshToken) -> datetime:
    return datetime.fromtimestamp(int(token["exp"]), UTC)


def _pair(refresh: RefreshToken) -> dict[str, str]:
    # The access token copies the refresh token's claims, the session id included.
    return {"access": str(refresh.access_token), "refresh": str(refresh)}


def token_pair_obtain(*, request: HttpRequest, username: str, password: str, client_ip: str) -> dict[str, str]:
    """Check the password (throttled, accounts.throttle) and open a new session: its first token pair."""
    try:
        user = authenticate(request, username=username, password=password)
    except LoginThrottled as exc:
        raise ApplicationError(
            str(exc), code="login_throttled", status_code=429, headers={"Retry-After": str(exc.retry_after)}
        ) from None
    if user is None or not user.is_active:
        # simplejwt's code for this, kept: clients of the earlier views may match on it.
        raise _unauthorized("no active account found with the given credentials", "no_active_account")
    refresh = RefreshToken.for_user(user)
    session = TokenSession.objects.create(
        user=user, refresh_jti=refresh["jti"], expires_at=_expiry(refresh), client_ip=client_ip[:64]
    )
    refresh["sid"] = str(session.id)
    return _pair(refresh)


def _refresh_decode(raw: str) -> tuple[RefreshToken, uuid.UUID]:
    try:
        token = RefreshToken(raw)  # type: ignore[arg-type]  # stubs say Token; it takes the encoded string
        sid = uuid.UUID(str(token["sid"]))
    except (TokenError, KeyError, ValueError):
        raise _unauthorized("refresh token is invalid or expired", "token_not_valid") from None
    return token, sid


def token_pair_refresh(*, raw_refresh: str) -> dict[str, str]:
    """Exchange the session's current refresh token for a new pair; an older one revokes the session."""
    token, sid = _refresh_decode(raw_refresh)
    session = TokenSession.objects.select_related("user").filter(pk=sid).first()
    if session is None:
        raise _unauthorized("refresh token is invalid or expired", "token_not_valid")
    if session.revoked_at is not None:
        raise _unauthorized("this session was revoked", "token_revoked")
    if not session.user.is_active:
        raise _unauthorized("the account is disabled", "token_not_valid")
    new = RefreshToken.for_user(session.user)
    new["sid"] = str(sid)
    now = timezone.now()
    # Compare-and-swap on the current jti: of two concurrent refreshes with the same token exactly
    # one wins, and the loser is treated as the reuse it is.
    swapped = TokenSession.objects.filter(pk=sid, refresh_jti=token["jti"], revoked_at__isnull=True).update(
        refresh_jti=new["jti"], refreshed_at=now, expires_at=_expiry(new)
    )
    if swapped == 1:
        return _pair(new)
    if session_revoke(session_id=sid, reason=TokenSession.Reason.REUSE):
        raise _unauthorized("refresh token was already used: the session is revoked", "token_reused")
    raise _unauthorized("this session was revoked", "token_revoked")


def session_revoke(*, session_id: uuid.UUID | str, reason: str) -> bool:
    """Revoke one session; False when it was already revoked (or never existed)."""
    updated = TokenSession.objects.filter(pk=session_id, revoked_at__isnull=True).update(
        revoked_at=timezone.now(), revoked_reason=reason
    )
    return updated == 1


def sessions_revoke(*, session_ids: Any, reason: str) -> int:
    return TokenSession.objects.filter(pk__in=session_ids, revoked_at__isnull=True).update(
        revoked_at=timezone.now(), revoked_reason=reason
    )


def user_sessions_revoke(*, user_id: int, reason: str) -> int:
    return TokenSession.objects.filter(user_id=user_id, revoked_at__isnull=True).update(
        revoked_at=timezone.now(), revoked_reason=reason
    )


def token_logout(*, access_claims: Any | None, raw_refresh: str | None) -> None:
    """Revoke the session named by the bearer access token, or else by the refresh token given."""
    if access_claims is not None:
        session_revoke(session_id=str(access_claims["sid"]), reason=TokenSession.Reason.LOGOUT)
        return
    if not raw_refresh:
        raise _unauthorized("send the bearer access token or the refresh token", "not_authenticated")
    _, sid = _refresh_decode(raw_refresh)
    session_revoke(session_id=sid, reason=TokenSession.Reason.LOGOUT)


def token_user_get(*, session_id: str, user_id: Any) -> Any | None:
    """The user of an access token whose session still stands, in one query; None otherwise.

    Every bearer request needs three facts: the user, that the token's session is not revoked, and
    whether the user may read metrics. Asked separately that was two queries (simplejwt's user
    lookup, the session check) plus two for an analyst's permissions (``has_perm`` loads the user's
    and the groups' permissions on a fresh user object, i.e. on every request). One query with a
    join and two ``EXISTS`` answers all three; the user carries ``can_read_metrics``, which
    ``accounts.permissions.CanReadMetrics`` reads instead of asking again. Revocation still takes
    effect at the next request: nothing here is cached but the statement's text.
    """
    try:
        sid = uuid.UUID(session_id)
    except ValueError:
        return None
    app_label, codename = READ_METRICS.split(".")
    db_sid = TokenSession._meta.pk.get_db_prep_value(sid, connection)
    users = get_user_model().objects.raw(_token_user_sql(), [app_label, codename, app_label, codename, user_id, db_sid])
    found = list(users)
    return found[0] if found else None


@functools.cache
def _token_user_sql() -> str:
    """The statement of :func:`token_user_get`, written once per process.

    Raw SQL because building the equivalent ORM query (a join and two ``Exists`` subqueries) cost
    more CPU per request than running it; only table and column names from the models' metadata
    are formatted in, every value is a parameter.
    """
    q = connection.ops.quote_name
    user_model = get_user_model()
    user_perms = user_model.user_permissions.through._meta
    user_groups = user_model.groups.through._meta
    group_perms = Group.permissions.through._meta

    def table(meta: Any) -> str:
        return q(meta.db_table)

    def col(meta: Any, field: str) -> str:
        return q(meta.get_field(field).column)

    read_metrics = (
        f"SELECT p.id FROM {table(Permission._meta)} p JOIN {table(ContentType._meta)} c "  # noqa: S608 - see above
        f"ON p.{col(Permission._meta, 'content_type')} = c.id WHERE c.app_label = %s AND p.codename = %s"
    )
    granted_to_user = (
        f"EXISTS (SELECT 1 FROM {table(user_perms)} up WHERE up.{col(user_perms, 'user')} = u.id "  # noqa: S608
        f"AND up.{col(user_perms, 'permission')} IN ({read_metrics}))"
    )
    granted_to_group = (
        f"EXISTS (SELECT 1 FROM {table(user_groups)} ug JOIN {table(group_perms)} gp "  # noqa: S608
        f"ON gp.{col(group_perms, 'group')} = ug.{col(user_groups, 'group')} "
        f"WHERE ug.{col(user_groups, 'user')} = u.id AND gp.{col(group_perms, 'permission')} IN ({read_metrics}))"
    )
    session = TokenSession._meta
    return (
        f"SELECT u.*, (u.is_superuser OR {granted_to_user} OR {granted_to_group}) AS can_read_metrics "  # noqa: S608
        f"FROM {table(user_model._meta)} u JOIN {table(session)} s ON s.{col(session, 'user')} = u.id "
        "WHERE u.id = %s AND s.id = %s AND s.revoked_at IS NULL"
    )


def token_sessions_prune(*, now: datetime | None = None) -> int:
    """Delete sessions whose refresh token has expired: their tokens are refused by expiry anyway.

    Revoked sessions are kept until then too, so a reused token of a revoked session still answers
    ``token_revoked`` rather than ``token_not_valid`` while it could otherwise be valid.
    """
    now = now or timezone.now()
    deleted, _ = TokenSession.objects.filter(Q(expires_at__lte=now)).delete()
    return deleted
