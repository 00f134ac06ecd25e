"""``POST /auth/token``, ``/auth/token/refresh``, ``/auth/logout``: parse, call the service, answer."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import services
from accounts.authentication import SessionJWTAuthentication
from analytics_platform.errors import ApplicationError
from ingest.allowlist import client_ip_get
from metrics.apis import ErrorSerializer  # the one error body of the API documentation


class TokenObtainSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150, trim_whitespace=False)
    password = serializers.CharField(max_length=4096, trim_whitespace=False)


class TokenRefreshSerializer(serializers.Serializer):
    refresh = serializers.CharField(max_length=4096)


class LogoutSerializer(serializers.Serializer):
    refresh = serializers.CharField(max_length=4096, required=False)


class TokenPairSerializer(serializers.Serializer):
    access = serializers.CharField(help_text="Bearer token for GET /metrics, valid 5 minutes")
    refresh = serializers.CharField(help_text="Exchanged once at /auth/token/refresh, valid 24 hours")


def _valid(serializer: serializers.Serializer) -> dict:
    if not serializer.is_valid():
        field, messages = next(iter(serializer.errors.items()))
        raise ApplicationError(f"{field}: {messages[0]}", code="invalid_parameter", field=field)
    return dict(serializer.validated_data)


class AuthTokenApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    InputSerializer = TokenObtainSerializer

    @extend_schema(
        operation_id="auth_token",
        summary="Obtain a token pair",
        request=InputSerializer,
        responses={
            200: TokenPairSerializer,
            401: OpenApiResponse(
                ErrorSerializer, description="`no_active_account`: wrong username or password, or a disabled account"
            ),
            429: OpenApiResponse(ErrorSerializer, description="`login_throttled`: retry after `Retry-After`"),
        },
    )
    def post(self, request: Request) -> Response:
        data = _valid(self.InputSerializer(data=request.data))
        pair = services.token_pair_obtain(
            request=request, username=data["username"], password=data["password"], client_ip=client_ip_get(request)
        )
        return Response(pair)


class AuthTokenRefreshApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    InputSerializer = TokenRefreshSerializer

    @extend_schema(
        operation_id="auth_token_refresh",
        summary="Rotate a refresh token",
        description=(
            "Answers a new pair; the refresh token sent is spent. Sending a spent one again revokes "
            "the whole session (401 `token_reused`)."
        ),
        request=InputSerializer,
        responses={
            200: TokenPairSerializer,
            401: OpenApiResponse(ErrorSerializer, description="`token_not_valid`, `token_revoked`, `token_reused`"),
        },
    )
    def post(self, request: Request) -> Response:
        data = _valid(self.InputSerializer(data=request.data))
        return Response(services.token_pair_refresh(raw_refresh=data["refresh"]))


class AuthLogoutApi(APIView):
    authentication_classes = [SessionJWTAuthentication]
    permission_classes = [AllowAny]

    InputSerializer = LogoutSerializer

    @extend_schema(
        operation_id="auth_logout",
        summary="Revoke the session",
        description="With the bearer access token, or the refresh token in the body: both stop working at once.",
        request=InputSerializer,
        responses={
            204: None,
            401: OpenApiResponse(ErrorSerializer, description="`not_authenticated`, `token_not_valid`"),
        },
    )
    def post(self, request: Request) -> Response:
        data = _valid(self.InputSerializer(data=request.data))
        services.token_logout(access_claims=request.auth, raw_refresh=data.get("refresh"))
        return Response(status=status.HTTP_204_NO_CONTENT)
