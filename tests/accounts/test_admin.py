"""The admin side of accounts: the login throttle on the admin login, revoking sessions, the
analysts group, the daily prune task."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import READ_METRICS, TokenSession
from accounts.tasks import token_sessions_prune_task

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-and-unguessed-passphrase"


def test_admin_login_is_throttled_per_username(client: Client) -> None:
    get_user_model().objects.create_superuser("ops", password=PASSWORD)
    for attempt in range(5):
        response = client.post("/admin/login/", {"username": "ops", "password": f"guess-{attempt}"})
        assert response.status_code == 200  # the form again, "please enter the correct ..."
    response = client.post("/admin/login/", {"username": "ops", "password": PASSWORD})
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "login_throttled"
    assert int(response["Retry-After"]) >= 1
    # The budget is shared with POST /auth/token: one place, one rule.
    token = APIClient().post("/auth/token", {"username": "ops", "password": PASSWORD}, format="json")
    assert token.status_code == 429 and int(token["Retry-After"]) >= 1


def test_admin_login_is_throttled_per_address(client: Client, settings: Any) -> None:
    settings.AUTH_THROTTLE_IP_ATTEMPTS = 3
    get_user_model().objects.create_superuser("ops", password=PASSWORD)
    for name in ("a", "b", "c"):
        assert client.post("/admin/login/", {"username": name, "password": "x"}).status_code == 200
    assert client.post("/admin/login/", {"username": "ops", "password": PASSWORD}).status_code == 429
    other = Client(REMOTE_ADDR="127.0.0.2")
    assert other.post("/admin/login/", {"username": "ops", "password": PASSWORD}).status_code == 302


def _session(username: str, password: str = PASSWORD) -> dict:
    response = APIClient().post("/auth/token", {"username": username, "password": password}, format="json")
    assert response.status_code == 200, response.content
    pair: dict = response.json()
    return pair


def test_admin_revokes_sessions(client: Client) -> None:
    ops = get_user_model().objects.create_superuser("ops", password=PASSWORD)
    pair = _session("ops")
    kept = _session("ops")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {pair['access']}")
    assert api.post("/auth/logout", {"refresh": "garbage"}, format="json").status_code == 204  # bearer wins
    pair = _session("ops")
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {pair['access']}")
    [target] = TokenSession.objects.filter(revoked_at__isnull=True).order_by("-created_at")[:1]
    client.force_login(ops)
    listing = client.get("/admin/accounts/tokensession/", {"q": "ops"})
    assert listing.status_code == 200 and listing.context["cl"].result_count == 3
    response = client.post(
        "/admin/accounts/tokensession/", {"action": "revoke", "_selected_action": [str(target.pk)]}, follow=True
    )
    assert response.status_code == 200 and b"1 session(s) revoked" in response.content
    assert TokenSession.objects.get(pk=target.pk).revoked_reason == "admin"
    refused = api.get("/metrics", {"metric": "views"})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "token_revoked"
    refreshed = APIClient().post("/auth/token/refresh", {"refresh": kept["refresh"]}, format="json")
    assert refreshed.status_code == 200  # the other session is untouched
    assert client.get("/admin/accounts/tokensession/add/").status_code == 403  # only /auth/token makes them


def test_admin_revokes_every_session_of_a_user(client: Client) -> None:
    ops = get_user_model().objects.create_superuser("ops", password=PASSWORD)
    reader = get_user_model().objects.create_user("reader", password=PASSWORD)
    pairs = [_session("reader") for _ in range(3)]
    other = _session("ops")
    client.force_login(ops)
    response = client.post(
        "/admin/auth/user/", {"action": "token_sessions_revoke", "_selected_action": [str(reader.pk)]}, follow=True
    )
    assert b"3 session(s) revoked" in response.content
    for pair in pairs:
        refreshed = APIClient().post("/auth/token/refresh", {"refresh": pair["refresh"]}, format="json")
        assert refreshed.json()["error"]["code"] == "token_revoked"
    assert APIClient().post("/auth/token/refresh", {"refresh": other["refresh"]}, format="json").status_code == 200


def test_password_change_in_the_admin_revokes(client: Client) -> None:
    ops = get_user_model().objects.create_superuser("ops", password=PASSWORD)
    reader = get_user_model().objects.create_user("reader", password=PASSWORD)
    pair = _session("reader")
    client.force_login(ops)
    new = PASSWORD + "-new"
    response = client.post(f"/admin/auth/user/{reader.pk}/password/", {"password1": new, "password2": new})
    assert response.status_code == 302, response.content
    session = TokenSession.objects.get(user=reader)
    assert session.revoked_reason == "password_change"
    refreshed = APIClient().post("/auth/token/refresh", {"refresh": pair["refresh"]}, format="json")
    assert refreshed.json()["error"]["code"] == "token_revoked"
    # Saving the user without touching the password revokes nothing.
    _session("reader", new)
    reader.refresh_from_db()
    reader.first_name = "R"
    reader.save()
    assert TokenSession.objects.filter(user=reader, revoked_at__isnull=True).count() == 1


def test_the_analysts_group_grants_reading_metrics() -> None:
    # Made by the data migration (the test database is migrated), holding the one permission.
    group = Group.objects.get(name="analysts")
    assert [f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.all()] == [READ_METRICS]
    user = get_user_model().objects.create_user("staff", password=PASSWORD, is_staff=True)
    assert not user.has_perm(READ_METRICS)
    user.groups.add(group)
    assert get_user_model().objects.get(pk=user.pk).has_perm(READ_METRICS)


def test_prune_task_is_scheduled_daily(settings: Any) -> None:
    schedule = settings.CELERY_BEAT_SCHEDULE["accounts-token-sessions-prune"]
    assert schedule["task"] == token_sessions_prune_task.name
    assert token_sessions_prune_task.apply().get() == 0
