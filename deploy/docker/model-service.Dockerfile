# The embedder and reranker services on CPU (one image; the command picks the service).
#   docker build -f deploy/docker/model-service.Dockerfile -t semsearch-models .
#   docker run semsearch-models semsearch serve reranker
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the CPU index: a plain `pip install torch` pulls the CUDA build
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
# every dependency pinned (scripts/lock_images.sh), then the project itself
COPY deploy/docker/model-service.lock.txt ./
RUN pip install --no-cache-dir --requirement model-service.lock.txt
COPY pyproject.toml README.md ./
COPY app ./app
COPY services ./services
RUN pip install --no-cache-dir --no-deps .

FROM ${PYTHON_IMAGE}
RUN useradd --create-home --uid 10001 semsearch \
    && mkdir -p /models \
    && chown semsearch:semsearch /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/models \
    SEMSEARCH_ONNX_CACHE_DIR=/models/onnx \
    SEMSEARCH_EMBEDDER_HOST=0.0.0.0 \
    SEMSEARCH_RERANKER_HOST=0.0.0.0
USER 10001
WORKDIR /home/semsearch
EXPOSE 8001 8002
CMD ["semsearch", "serve", "embedder"]
