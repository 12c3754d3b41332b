# A trainer worker on a GPU host: torch with CUDA from the base image, the project on top.
# Build from the repository root: docker build -f docker/worker.Dockerfile -t helios-hpo-worker .
# BASE: any image whose python3 has torch (the tests build on a local CPU one, EXPECT_CUDA=0).
ARG BASE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE}
ARG EXPECT_CUDA=1

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/helios-hpo
# A virtual environment that sees the base's torch; torch is pinned to the base image's
# build so that pip never replaces it. The dependencies go in a layer of their own, so
# a change to the sources rebuilds only the project's layer below.
COPY pyproject.toml docker/requirements.py ./
RUN python3 -m venv --system-site-packages /opt/helios-hpo/venv \
    && venv/bin/python -c "import torch; print('torch==' + torch.__version__)" > /tmp/torch.txt \
    && venv/bin/python requirements.py pyproject.toml service > /tmp/requirements.txt \
    && venv/bin/pip install --constraint /tmp/torch.txt --requirement /tmp/requirements.txt
COPY README.md alembic.ini ./
COPY helios ./helios
COPY service ./service
RUN venv/bin/pip install --no-deps --no-build-isolation . \
    && venv/bin/python -c "import torch; assert '$EXPECT_CUDA' != '1' or torch.version.cuda, 'torch lost its CUDA build'"
ENV PATH=/opt/helios-hpo/venv/bin:$PATH

RUN groupadd --gid 10001 helios \
    && useradd --create-home --uid 10001 --gid 10001 helios \
    && mkdir -p /data \
    && chown 10001:10001 /data
USER 10001:10001
ENV HELIOS_HPO_DATA_DIR=/data
VOLUME ["/data"]

ENTRYPOINT ["helios-hpo", "worker"]
