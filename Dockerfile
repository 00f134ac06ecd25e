# Production image (built by the CI pipeline of the deployment repository; no Docker engine here).
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 ANALYTICS_VAR_DIR=/app/var
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
USER 10001
EXPOSE 8000
CMD ["gunicorn", "-c", "python:analytics_platform.gunicorn_conf", "--bind=0.0.0.0:8000"]
