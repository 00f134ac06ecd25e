"""Django's model backend behind the login throttle: one place for /auth/token and the admin login.

Both call ``django.contrib.auth.authenticate``; a throttled attempt raises ``LoginThrottled`` out
of it before any password is hashed (Django only swallows ``PermissionDenied`` from a backend), and
``accounts.middleware.LoginThrottleMiddleware`` / the token view turn it into a 429.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.http import HttpRequest

from accounts.throttle import login_attempt_begin, login_attempt_end
from ingest.allowlist import client_ip_get


class ThrottledModelBackend(ModelBackend):
    def authenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> Any:
        if username is None:
            username = kwargs.get(get_user_model().USERNAME_FIELD)
        if username is None or password is None:
            return None
        ip = client_ip_get(request) if request is not None else None
        login_attempt_begin(ip=ip, username=username)
        user = super().authenticate(request, username=username, password=password, **kwargs)
        login_attempt_end(username=username, success=user is not None)
        return user
