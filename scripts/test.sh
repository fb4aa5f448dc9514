#!/usr/bin/env bash
# The README's second command: set up with dev tools, make sure the system tools the tests use
# exist, run pytest.
#   redis-server:   the tests start a real one
#   docker-compose: its `config` validates deploy/compose (no Docker engine is needed)
#   chromium:       the playground page's tests drive it headless through Playwright (the
#                   `dev` extra); Playwright's own browser download is not used
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --dev
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
chromium="${SEMSEARCH_TEST_CHROMIUM:-/usr/bin/chromium}"
[[ -x "$chromium" ]] || missing+=(chromium)
if (( ${#missing[@]} )); then
    if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
        echo "missing ${missing[*]}: installing with apt-get ..."
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "The tests need ${missing[*]}, which is not installed. Install it with" >&2
        echo "  sudo apt-get install ${missing[*]}    (Debian/Ubuntu)" >&2
        echo "  brew install redis docker-compose    (macOS; for chromium, point" >&2
        echo "  SEMSEARCH_TEST_CHROMIUM at a Chrome or Chromium executable)" >&2
        exit 1
    fi
fi
if [[ ! -x "$chromium" ]]; then
    echo "chromium is still not at $chromium after installing it; the browser tests need it" >&2
    echo "(set SEMSEARCH_TEST_CHROMIUM to a Chrome or Chromium executable)" >&2
    exit 1
fi
exec .venv/bin/python -m pytest "$@"
