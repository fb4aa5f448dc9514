# The embedder and reranker services on an NVIDIA GPU (fp16). Needs the NVIDIA container
# toolkit on the host; the torch wheel brings its own CUDA libraries.
#   docker build -f deploy/docker/model-service.cuda.Dockerfile -t semsearch-models:cuda .
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --no-cache-dir torch==2.13.0
# every dependency pinned (scripts/lock_images.sh), then the project itself
COPY deploy/docker/model-service.lock.txt ./
RUN pip install --no-cache-dir --requirement model-service.lock.txt
COPY pyproject.toml README.md ./
COPY app ./app
COPY services ./services
RUN pip install --no-cache-dir --no-deps .

FROM ${CUDA_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 semsearch \
    && mkdir -p /models \
    && chown semsearch:semsearch /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/models \
    SEMSEARCH_ONNX_CACHE_DIR=/models/onnx \
    SEMSEARCH_EMBEDDER_HOST=0.0.0.0 \
    SEMSEARCH_RERANKER_HOST=0.0.0.0 \
    SEMSEARCH_EMBEDDER_DEVICE=cuda \
    SEMSEARCH_RERANKER_DEVICE=cuda
USER 10001
WORKDIR /home/semsearch
EXPOSE 8001 8002
CMD ["semsearch", "serve", "embedder"]
