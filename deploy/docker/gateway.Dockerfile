# The gateway (and `semsearch index`): no torch, it calls the embedder and reranker services.
#   docker build -f deploy/docker/gateway.Dockerfile -t semsearch-gateway .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# every dependency pinned (scripts/lock_images.sh), then the project itself
COPY deploy/docker/gateway.lock.txt ./
RUN pip install --no-cache-dir --requirement gateway.lock.txt
COPY pyproject.toml README.md ./
COPY app ./app
COPY services ./services
RUN pip install --no-cache-dir --no-deps .

FROM ${PYTHON_IMAGE}
RUN useradd --create-home --uid 10001 semsearch \
    && mkdir -p /data/index /models \
    && chown semsearch:semsearch /data/index /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/models \
    SEMSEARCH_HOST=0.0.0.0 \
    SEMSEARCH_INDEX_DIR=/data/index
USER 10001
WORKDIR /home/semsearch
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=2)"]
CMD ["semsearch", "serve", "gateway"]
