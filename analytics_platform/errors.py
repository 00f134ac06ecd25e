"""One domain error type and one DRF handler, so every API error body has the same shape.

Body: ``{"error": {"code": "...", "message": "...", "field": "..."?}}`` plus any extra keys the
error carries (the ingest endpoint adds ``accepted``/``rejected``/``errors``).
"""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


class ApplicationError(Exception):
    """An error the client can act on; rendered as JSON with ``status_code``."""

    status_code: int = status.HTTP_400_BAD_REQUEST

    def __init__(
        self,
        message: str,
        *,
        code: str = "invalid",
        field: str | None = None,
        status_code: int | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.field = field
        if status_code is not None:
            self.status_code = status_code
        self.extra = extra or {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error, **self.extra}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApplicationError):
        return Response(exc.body(), status=exc.status_code, headers=exc.headers)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        # simplejwt's token errors carry a dict detail whose "code" names the failure.
        if isinstance(codes, str):
            code = codes
        elif isinstance(codes, dict) and isinstance(jwt_code := codes.get("code"), str):
            code = jwt_code
        else:
            code = "invalid"
        detail = response.data
        message = detail.get("detail", "") if isinstance(detail, dict) else ""
        body: dict[str, Any] = {"error": {"code": code, "message": str(message) or str(exc)}}
        if isinstance(exc, exceptions.ValidationError):
            body["error"]["details"] = detail
        response.data = body
    return response
