"""The interactive API docs: drf-spectacular's Swagger UI and Redoc pages, served offline.

Both load their bundles from drf-spectacular-sidecar's static files (settings: ``*_DIST =
"SIDECAR"``) and the schema from ``/api/schema/``. The Redoc bundle still hard-codes one image
from cdn.redoc.ly (its "API docs by Redocly" logo): a Content-Security-Policy keeps every fetch of
these pages on this server, so the browser never asks for it (the bundle hides the image then).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerView
from rest_framework.request import Request
from rest_framework.response import Response

# Inline scripts and styles: both pages start their bundle from a <script> block; Redoc also runs
# its search in a worker built from a blob: URL.
DOCS_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' blob:; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


class _SameOriginOnly:
    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]
        response["Content-Security-Policy"] = DOCS_CONTENT_SECURITY_POLICY
        return response


class SwaggerView(_SameOriginOnly, SpectacularSwaggerView):
    pass


class RedocView(_SameOriginOnly, SpectacularRedocView):
    pass
