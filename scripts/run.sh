#!/usr/bin/env bash
# The README's first command: set up, index the sample corpus if there is no index, serve.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
index_dir="${SEMSEARCH_INDEX_DIR:-var/index}"
collection="${SEMSEARCH_DEFAULT_COLLECTION:-default}"
if [[ ! -f "$index_dir/$collection/CURRENT" ]]; then
    echo "no index yet: indexing data/corpus.jsonl into collection '$collection' ..."
    .venv/bin/semsearch index data/corpus.jsonl --collection "$collection"
fi
echo "gateway on http://${SEMSEARCH_HOST:-127.0.0.1}:${SEMSEARCH_PORT:-8000} (playground at /, API docs at /docs)"
exec .venv/bin/semsearch serve gateway
