#!/usr/bin/env bash
# The README's second command: set up with dev tools, make sure redis-server exists, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --dev
if ! command -v redis-server >/dev/null 2>&1; then
    if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
        echo "redis-server is missing: installing it with apt-get ..."
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
        echo "The tests start a real redis-server, which is not installed. Install it with" >&2
        echo "  sudo apt-get install redis-server    (Debian/Ubuntu)" >&2
        echo "  brew install redis                   (macOS)" >&2
        exit 1
    fi
fi
exec .venv/bin/python -m pytest "$@"
