# Production image: built and pushed by .github/workflows/ci.yaml (no Docker engine on the
# development machines; the file is checked by tests/deploy: multi-stage, pinned, non-root).
# Base: python:3.11-slim-bookworm by digest (Dependabot, .github/dependabot.yml, moves it).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

# --- build: wheels of the project and its dependencies, compilers allowed here only ---
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY analytics_platform analytics_platform
COPY ingest ingest
COPY metrics metrics
COPY streams streams
COPY etl etl
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --upgrade pip && /opt/venv/bin/pip install .

# --- runtime: the virtualenv and the code, no build tools, a non-root user ---
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 ANALYTICS_VAR_DIR=/app/var DJANGO_STATIC_ROOT=/app/static PATH=/opt/venv/bin:$PATH
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /tmp app && mkdir -p /app/var && chown 10001:10001 /app/var
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
# The source tree too: settings find templates/ beside the packages (BASE_DIR), and /app comes
# first on sys.path for manage.py, gunicorn and celery alike.
COPY analytics_platform analytics_platform
COPY ingest ingest
COPY metrics metrics
COPY streams streams
COPY etl etl
COPY templates templates
COPY sdk/js/player.js sdk/js/player.mjs sdk/js/
COPY manage.py ./
# Hashed, gzip- and brotli-compressed static files, baked into the image and served by WhiteNoise.
# The throwaway key only lets settings load for this build step (the local default would write
# one into the image); the running container takes DJANGO_SECRET_KEY from its environment.
RUN DJANGO_SECRET_KEY=collectstatic-build-only python manage.py collectstatic --noinput -v1
USER 10001
EXPOSE 8000
HEALTHCHECK NONE
CMD ["gunicorn", "-c", "python:analytics_platform.gunicorn_conf", "--bind=0.0.0.0:8000"]
