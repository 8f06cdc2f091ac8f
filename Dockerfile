# intents-mm image: one image for every service; the command picks what runs.
#   docker run intents-mm                              -> run-all (every service in one process)
#   docker run intents-mm run near-intents-ingest      -> one service (NATS_URL + POSTGRES_URL)
#   docker run intents-mm migrate                      -> apply the PostgreSQL schema (idempotent)
# Build: docker build -t intents-mm:latest .   (compose.yml and deploy/k3s use that tag)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: a virtualenv with the pinned dependencies and the package's wheel ----
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build

# Dependencies first (their layer is rebuilt only when pyproject.toml or constraints.txt change):
# the runtime requirements listed in pyproject.toml, each pinned by constraints.txt.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && pip install -c constraints.txt -r requirements.txt

# Then the package itself, as a wheel (not editable), installed against the same pins.
COPY README.md ./
COPY src ./src
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && pip install -c constraints.txt /wheels/*.whl \
    && intents-mm --help > /dev/null

# ---- runtime: slim Python, the virtualenv, a non-root user; no compilers, no pip cache ----
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 intents \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin intents \
    && mkdir -p /app/var \
    && chown 10001:10001 /app/var
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    INTENTS_MM_VAR_DIR=/app/var \
    CONTROL_API_HOST=0.0.0.0 \
    HEALTHCHECK_PORT=8081
# CONTROL_API_HOST=0.0.0.0 makes the control APIs reachable through published ports; the
# configuration then refuses to start without CONTROL_API_TOKEN (set it in .env / the Secret).
WORKDIR /app
USER 10001:10001
EXPOSE 8081-8087

# GET /healthz on the service's control port (HEALTHCHECK_PORT, set per service in compose.yml):
# 200 is healthy; a 503 or no answer exits 1 (unhealthy) with one line saying why, which
# `docker inspect` shows. Stdlib only: the slim image has no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.error, urllib.request\nurl = 'http://127.0.0.1:' + os.environ.get('HEALTHCHECK_PORT', '8081') + '/healthz'\ntry:\n    urllib.request.urlopen(url, timeout=4)\nexcept urllib.error.HTTPError as e:\n    sys.exit(f'{url}: {e.code} ' + e.read(500).decode(errors='replace'))\nexcept OSError as e:\n    sys.exit(f'{url}: {e}')\n"]

ENTRYPOINT ["intents-mm"]
CMD ["run-all"]
