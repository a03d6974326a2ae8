# The service, as it runs in production: slim, as an unprivileged user, with a health check.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

COPY pyproject.toml README.md requirements.lock ./
COPY domain/ domain/
COPY eventstore/ eventstore/
COPY commands/ commands/
COPY projections/ projections/
COPY api/ api/
COPY migrations/ migrations/
# The runtime dependencies exactly as locked (scripts/lock.sh), then the project itself.
RUN pip install --require-hashes -r requirements.lock \
    && pip install --no-deps . \
    && useradd --system --uid 10001 --home-dir /app service \
    && chown -R service /app

USER service
ENV HOST=0.0.0.0 PORT=8002
EXPOSE 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/health/ready', timeout=2)"
CMD ["python", "-m", "api", "serve", "--production"]
