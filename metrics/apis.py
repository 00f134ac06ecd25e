"""``GET /metrics``: parse and check the query string, call the selector, return its body.

Authentication is the project default (bearer tokens of a live token session, accounts/); tokens
come from ``POST /auth/token`` and ``POST /auth/token/refresh``. Reading needs the
``accounts.read_metrics`` permission (the "analysts" group), not just an account.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import renderers, serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import CanReadMetrics
from analytics_platform.errors import ApplicationError
from metrics import bounds, query
from metrics.selectors import metric_timeseries_json


class ErrorSerializer(serializers.Serializer):
    class ErrorBody(serializers.Serializer):
        code = serializers.CharField()
        message = serializers.CharField()
        field = serializers.CharField(required=False, help_text="The query parameter at fault.")

    error = ErrorBody()


class Rfc3339Field(serializers.Field):
    """A date-time in RFC 3339, parsed by ``metrics.bounds`` (its one rule); no offset means UTC."""

    def to_internal_value(self, data: Any) -> datetime:
        if not isinstance(data, str):
            raise serializers.ValidationError("must be a string")
        try:
            # Without an offset: UTC, as this API always read it (refusing it now would break clients).
            return bounds.moment_parse(data, field=self.field_name or "date", assume_utc=True)
        except query.QueryError as exc:
            raise serializers.ValidationError(exc.message) from exc

    def to_representation(self, value: datetime) -> str:
        return value.isoformat()


class OrjsonRenderer(renderers.JSONRenderer):
    """JSON through orjson: a 30-day hourly answer has thousands of points, and the stdlib encoder
    spent a visible share of the request's CPU on them."""

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        if data is None:
            return b""
        if isinstance(data, bytes):  # the selector's answer, rendered once (and cached so)
            return data
        return orjson.dumps(data)


class MetricsQueryApi(APIView):
    renderer_classes = [OrjsonRenderer]
    permission_classes = [IsAuthenticated, CanReadMetrics]

    class InputSerializer(serializers.Serializer):
        metric = serializers.ListField(child=serializers.CharField(max_length=64), min_length=1, max_length=20)
        interval = serializers.ChoiceField(choices=list(query.INTERVALS), required=False)
        groupBy = serializers.ListField(
            child=serializers.ChoiceField(choices=list(query.DIMENSIONS)), required=False, max_length=3
        )
        filter = serializers.ListField(child=serializers.CharField(max_length=300), required=False, max_length=20)
        limit = serializers.IntegerField(min_value=1, max_value=query.MAX_LIMIT, required=False, default=100)

        def get_fields(self) -> dict[str, serializers.Field]:
            fields: dict[str, serializers.Field] = super().get_fields()
            # `from` is a Python keyword, so these two cannot be class attributes.
            fields["from"] = Rfc3339Field(required=False)
            fields["to"] = Rfc3339Field(required=False)
            return fields

        def validate_filter(self, value: list[str]) -> list[tuple[str, str]]:
            parsed = []
            for item in value:
                dim, sep, val = item.partition(":")
                if not sep:
                    raise serializers.ValidationError(f"{item!r} is not dimension:value")
                if dim not in query.DIMENSIONS:
                    raise serializers.ValidationError(f"unknown dimension {dim!r}")
                parsed.append((dim, val))
            return parsed

    class OutputSerializer(serializers.Serializer):
        class MetricSerializer(serializers.Serializer):
            class SeriesSerializer(serializers.Serializer):
                class PointSerializer(serializers.Serializer):
                    t = serializers.DateTimeField(help_text="Bucket start, UTC")
                    value = serializers.FloatField(allow_null=True)

                group = serializers.DictField(child=serializers.CharField())
                points = PointSerializer(many=True)
                total = serializers.FloatField(allow_null=True)

            metric = serializers.CharField()
            unit = serializers.CharField()
            series = SeriesSerializer(many=True)

        interval = serializers.CharField(allow_null=True)
        metrics = MetricSerializer(many=True)

        def get_fields(self) -> dict[str, serializers.Field]:
            fields: dict[str, serializers.Field] = super().get_fields()
            fields["from"] = serializers.DateTimeField()
            fields["to"] = serializers.DateTimeField()
            return fields

    @extend_schema(
        operation_id="metrics_query",
        summary="Query aggregated metrics",
        description=(
            "Time series (with `interval`) or totals of one or more metric definitions over "
            "[`from`, `to`) in UTC. Empty buckets are 0 for counts and sums, null for averages, "
            "quantiles and ratios. Several `filter` values for one dimension are alternatives (OR); "
            "different dimensions all apply (AND). With `groupBy`, the `limit` groups with the "
            "largest total are returned, largest first. Bounds (400 naming the parameter, the message "
            "says the maximum): buckets per series by interval, points of a grouped answer (limit x "
            "buckets), the range of a groupBy on videoId; unknown or repeated single-valued "
            "parameters are refused. Each ClickHouse query runs under a time and a memory limit "
            "(422 `query_too_expensive` when one stops it)."
        ),
        parameters=[
            OpenApiParameter("metric", OpenApiTypes.STR, many=True, required=True, description="Metric name"),
            OpenApiParameter(
                "from",
                OpenApiTypes.DATETIME,
                description="RFC 3339 with a UTC offset, 1970-01-01T00:00:00Z or later; default: `to` - 24 h",
            ),
            OpenApiParameter(
                "to",
                OpenApiTypes.DATETIME,
                description=(
                    "RFC 3339 with a UTC offset, exclusive, 2200-01-01T00:00:00Z at the latest; "
                    "default: now, rounded up to the minute"
                ),
            ),
            OpenApiParameter("interval", OpenApiTypes.STR, enum=list(query.INTERVALS)),
            OpenApiParameter("groupBy", OpenApiTypes.STR, many=True, enum=list(query.DIMENSIONS)),
            OpenApiParameter("filter", OpenApiTypes.STR, many=True, description="`dimension:value`"),
            OpenApiParameter("limit", OpenApiTypes.INT, description="Groups returned (default 100)"),
        ],
        responses={
            200: OutputSerializer,
            400: OpenApiResponse(
                ErrorSerializer,
                description="A parameter is invalid, unknown, repeated or out of bounds; `error.field` names it",
            ),
            401: OpenApiResponse(
                ErrorSerializer,
                description="`not_authenticated`, `token_not_valid` (bad or expired), `token_revoked` (session ended)",
            ),
            403: OpenApiResponse(
                ErrorSerializer,
                description="`permission_denied` (no accounts.read_metrics), `ip_not_allowed` (api allowlist)",
            ),
            422: OpenApiResponse(
                ErrorSerializer,
                description="`query_too_expensive`: stopped by the time or memory limit; ask a narrower question",
            ),
            503: OpenApiResponse(ErrorSerializer, description="`clickhouse_unavailable`: retry after `Retry-After`"),
        },
    )
    def get(self, request: Request) -> Response:
        _params_check(request)
        serializer = self.InputSerializer(data=request.query_params)
        if not serializer.is_valid():
            field, messages = next(iter(serializer.errors.items()))
            message = _first_message(messages)
            if not message.startswith(field):  # DRF's own messages do not say which parameter
                message = f"{field}: {message}"
            raise ApplicationError(message, code="invalid_parameter", field=field)
        data: dict[str, Any] = serializer.validated_data
        body = metric_timeseries_json(
            metrics=data["metric"],
            start=data.get("from"),
            end=data.get("to"),
            interval=data.get("interval"),
            group_by=data.get("groupBy", []),
            filters=data.get("filter", []),
            limit=data["limit"],
        )
        return Response(body)


#: Query parameters that may be given more than once (API.md); the others at most once.
REPEATABLE = frozenset({"metric", "groupBy", "filter"})
PARAMETERS = REPEATABLE | {"from", "to", "interval", "limit"}


def _params_check(request: Request) -> None:
    """Refuse repeated single-valued parameters, naming them: of ``to=a&to=b`` one would win unseen.

    Unknown parameters are ignored, as they always were: clients add cache-busters (``_=``) and
    newer clients may send parameters this server does not know yet (API.md: extend, never break).
    """
    for name in request.query_params:
        if name in PARAMETERS and name not in REPEATABLE and len(request.query_params.getlist(name)) > 1:
            raise ApplicationError(f"{name} may be given once", code="invalid_parameter", field=name)


def _first_message(messages: Any) -> str:
    """DRF nests list-item errors in dicts keyed by index; dig out the first human message."""
    while isinstance(messages, dict | list) and messages:
        messages = next(iter(messages.values())) if isinstance(messages, dict) else messages[0]
    return str(messages)
