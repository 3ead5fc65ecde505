# gemini-backend image: one image for every process of a deployment.
#
#   docker build -t gemini-backend .
#   docker run ... gemini-backend                            # the API (default CMD, port 8000)
#   docker run ... gemini-backend gemini-backend migrate     # a deployment step, before the API
#   docker run ... gemini-backend gemini-backend worker      # a queue worker (production mode)
#
# compose.yaml and render.yaml run it in production mode (PostgreSQL + Redis); docs/deployment.md
# explains the settings. The default CMD does not migrate: migrations are a separate step.

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: exactly the locked dependencies, installed by uv into /app/.venv ------------------
FROM ${PYTHON_IMAGE} AS builder

# The uv release the Makefile pins.
ARG UV_VERSION=0.13.8

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv

RUN python -m pip install "uv==${UV_VERSION}"

WORKDIR /app

# Dependencies first (their own layer, rebuilt only when the lock changes). --frozen installs
# what uv.lock pins and fails rather than re-resolving; without --extra dev the test and lint
# tools are left out. README.md is part of the package metadata (pyproject's `readme`).
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project --no-progress

# Then the project itself. uv installs it in editable mode, pointing at /app/src: the runtime
# finds the Alembic scripts in /app/migrations next to src/ (see gemini_backend/migrate.py), so
# the runtime stage keeps this exact layout.
COPY src/ src/
COPY migrations/ migrations/
COPY alembic.ini ./
RUN uv sync --frozen --no-dev --no-progress \
    && /app/.venv/bin/python -m compileall -q src migrations \
    && /app/.venv/bin/gemini-backend --help > /dev/null

# --- runtime: the virtualenv and the sources, run by an unprivileged user --------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/app/.venv/bin:$PATH \
    LOG_FORMAT=json \
    DATA_DIR=/data \
    PORT=8000

RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid app --no-log-init --create-home --home-dir /home/app \
        --shell /usr/sbin/nologin app \
    && mkdir -p /data \
    && chown app:app /data

WORKDIR /app
# Owned by root and read-only for the app user: the code cannot be changed by the process.
COPY --from=builder /app /app

# Numeric, so that runtimes can check it is not root (Kubernetes runAsNonRoot): the app user.
USER 10001:10001

# DATA_DIR: embedded mode's SQLite file and a generated JWT secret. Production mode (PostgreSQL +
# Redis, JWT_SECRET set) keeps nothing here, but the path is writable by the app user either way.
VOLUME ["/data"]
EXPOSE 8000

# Liveness (no I/O). python:3.11-slim has no curl; urlopen raises (exit 1) on errors and non-2xx.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)"]

CMD ["gemini-backend", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-migrate"]
