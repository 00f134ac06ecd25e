from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from accounts.models import READ_METRICS


class CanReadMetrics(BasePermission):
    """Reading metrics is granted (the "analysts" group, or the permission itself), not implied by
    having an account: 403 ``permission_denied`` otherwise."""

    message = "reading metrics needs the accounts.read_metrics permission (the analysts group)"
    code = "permission_denied"

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if user is None or not user.is_authenticated:
            return False
        # Bearer requests: answered by the authentication's own query (accounts.services.token_user_get).
        known = getattr(user, "can_read_metrics", None)
        return bool(known) if known is not None else bool(user.has_perm(READ_METRICS))
