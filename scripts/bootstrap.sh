#!/usr/bin/env bash
# Create .venv and install semsearch with its in-process models (and dev tools with --dev).
# torch is installed first and pinned: see DEVELOPERS.md. Re-running is fast: the install is
# skipped while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="models,onnx"
[[ "${1:-}" == "--dev" ]] && extras="models,dev"
python="${PYTHON:-python3}"
torch_pin="${SEMSEARCH_TORCH_PIN:-torch==2.13.0}"

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "semsearch needs Python >= 3.11 (found: $("$python" --version 2>&1)). Set PYTHON=python3.11." >&2
    exit 1
fi
[[ -x .venv/bin/python ]] || "$python" -m venv .venv

stamp=".venv/.semsearch-installed-$(cat pyproject.toml | sha1sum | cut -c1-12)-${extras//,/-}"
if [[ ! -f "$stamp" ]]; then
    echo "installing into .venv ($torch_pin, then semsearch[$extras]) ..."
    .venv/bin/pip install --quiet --disable-pip-version-check "$torch_pin"
    .venv/bin/pip install --quiet --disable-pip-version-check -e ".[$extras]"
    rm -f .venv/.semsearch-installed-*
    touch "$stamp"
fi
