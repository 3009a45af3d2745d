# syntax=docker/dockerfile:1
#
# One image for both processes of HatchBeacon Webhooks:
#   API:     docker run IMAGE                         (default: webhooks serve --host 0.0.0.0 --port 8000)
#   worker:  docker run IMAGE webhooks worker
#   account: docker run --rm IMAGE webhooks create-account "Acme"
# Configuration is entirely through WEBHOOKS_* environment variables (see webhooks/settings.py);
# docker-compose.yml wires it to MongoDB and Redis.

ARG PYTHON_IMAGE=python:3.11-slim

# --------------------------------------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder

# Node.js + npm only to fetch the browser assets (GraphiQL, the customer portal); they stay in this stage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends nodejs npm \
    && rm -rf /var/lib/apt/lists/*

RUN pip install --no-cache-dir uv==0.13.9

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

WORKDIR /app

# Dependencies first (pinned in pyproject.toml; no lock file is committed), so that source edits reuse
# this layer. --no-dev leaves out the dev group and with it the embedded development stores (SecantusDB,
# Valkey): `webhooks dev` is not for production.
COPY pyproject.toml README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --no-dev --no-install-project

COPY webhooks ./webhooks
COPY graphql_api ./graphql_api
COPY workers ./workers
COPY webhooks_cli ./webhooks_cli
COPY hatch_build.py ./
COPY frontend/package*.json ./frontend/

# GraphiQL's assets (React, GraphiQL) and the customer portal's modules (htm + Preact, graphql-ws) from
# the npm registry into graphql_api/static/vendor, so /graphql and /portal never load anything from a CDN. build_assets() logs why and returns False when npm
# fails; a False result fails the image build rather than shipping the CDN fallback silently.
RUN --mount=type=cache,target=/root/.npm \
    /app/.venv/bin/python -c "import logging, sys; from pathlib import Path; \
from graphql_api.graphiql import build_assets; \
logging.basicConfig(level=logging.INFO); \
sys.exit(0 if build_assets(Path('.')) else 'GraphiQL assets could not be built (see the log above)')" \
    && rm -rf frontend/node_modules

# The project itself, installed editable: the vendored assets are git-ignored, so a wheel built by
# hatchling would leave them out; importing from /app keeps graphql_api/static/vendor in place.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --no-dev \
    && rm -f uv.lock \
    && /app/.venv/bin/python -m compileall -q webhooks graphql_api workers webhooks_cli

# --------------------------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    WEBHOOKS_DATA_DIR=/var/lib/webhooks

RUN groupadd --system --gid 10001 webhooks \
    && useradd --system --uid 10001 --gid webhooks --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin webhooks \
    && install -d -o webhooks -g webhooks -m 0700 /var/lib/webhooks

WORKDIR /app
# Owned by root and read-only for the service user; only WEBHOOKS_DATA_DIR is writable.
COPY --from=builder /app /app

USER webhooks:webhooks
EXPOSE 8000

CMD ["webhooks", "serve", "--host", "0.0.0.0", "--port", "8000"]
