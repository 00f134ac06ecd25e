from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse

from accounts.throttle import LoginThrottled


class LoginThrottleMiddleware:
    """A throttled admin login (``LoginThrottled`` out of ``authenticate``) answers 429 + Retry-After."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, LoginThrottled):
            return None
        body = {"error": {"code": "login_throttled", "message": str(exception)}}
        return JsonResponse(body, status=429, headers={"Retry-After": str(exception.retry_after)})
