# The API, the supervisor and the embedded dashboard; no CUDA (the service never trains).
# Build from the repository root: docker build -f docker/service.Dockerfile -t helios-hpo-service .
# BASE and TORCH_SPEC: the tests build on a local base that has torch already (TORCH_SPEC="").
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
ARG TORCH_SPEC="torch==2.5.1"
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/helios-hpo
# The CPU build of torch first: the default wheel pulls several GB of CUDA libraries.
RUN python3 -m venv --system-site-packages /opt/helios-hpo/venv \
    && if [ -n "$TORCH_SPEC" ]; then \
        venv/bin/pip install --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"; \
    fi
ENV PATH=/opt/helios-hpo/venv/bin:$PATH
# The dependencies (bounded in pyproject.toml) in a layer of their own, then the project
# itself from this checkout: a change to the sources rebuilds only the last layer.
COPY pyproject.toml docker/requirements.py ./
RUN python requirements.py pyproject.toml service dashboard > /tmp/requirements.txt \
    && pip install --requirement /tmp/requirements.txt
COPY README.md alembic.ini ./
COPY helios ./helios
COPY service ./service
RUN pip install --no-deps --no-build-isolation .

RUN groupadd --gid 10001 helios \
    && useradd --create-home --uid 10001 --gid 10001 helios \
    && mkdir -p /data \
    && chown 10001:10001 /data
USER 10001:10001
ENV HELIOS_HPO_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["sh", "-c", "helios-hpo db upgrade && exec helios-hpo serve --host 0.0.0.0 --port 8000"]
