# Production image (built by the CI pipeline of the deployment repository; no Docker engine here).
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 ANALYTICS_VAR_DIR=/app/var DJANGO_STATIC_ROOT=/app/static
WORKDIR /app
COPY pyproject.toml README.md ./
COPY analytics_platform analytics_platform
COPY ingest ingest
COPY metrics metrics
COPY streams streams
COPY etl etl
COPY templates templates
COPY sdk/js/player.js sdk/js/player.mjs sdk/js/
COPY manage.py ./
RUN pip install --no-cache-dir . && useradd --uid 10001 --create-home app && mkdir -p /app/var && chown app /app/var
# Hashed, gzip- and brotli-compressed static files, baked into the image and served by WhiteNoise.
# The throwaway key only lets settings load for this build step (the local default would write
# one into the image); the running container takes DJANGO_SECRET_KEY from its environment.
RUN DJANGO_SECRET_KEY=collectstatic-build-only python manage.py collectstatic --noinput -v1
USER 10001
EXPOSE 8000
CMD ["gunicorn", "-c", "python:analytics_platform.gunicorn_conf", "--bind=0.0.0.0:8000"]
