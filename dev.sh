#!/usr/bin/env bash
# Developer entry point. `./dev.sh serve` runs the service in demo mode (the demo page
# on http://127.0.0.1:8080/) with a dev secret and a dev API key;
# `./dev.sh test` runs ruff, mypy (strict, on roomcast/), the layer contracts
# (lint-imports), then every test. Both set up
# .venv on first use (and again whenever pyproject.toml changes), so a fresh machine
# needs nothing else.
set -euo pipefail
cd "$(dirname "$0")"

DEV_SECRET="roomcast-dev-secret-change-me-0123456789"
DEV_API_KEY="roomcast-dev-api-key"

setup() {
    local stamp=.venv/.roomcast-installed
    local want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        python3 -m venv .venv
        .venv/bin/python -m pip install -q --upgrade pip >/dev/null
        .venv/bin/python -m pip install -q -e '.[test]'
        echo "$want" > "$stamp"
    fi
}

# The cluster tests start their own Redis servers from Debian's redis-server.
need_redis() {
    if ! command -v redis-server >/dev/null 2>&1; then
        echo "installing redis-server (Debian package) for the cluster tests"
        if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
        $SUDO apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
        # The package starts a system Redis on 6379; the tests need only the binary.
        $SUDO systemctl stop redis-server >/dev/null 2>&1 || $SUDO service redis-server stop >/dev/null 2>&1 || true
    fi
}

# The browser tests (tests/test_browser.py) drive Debian's chromium through Playwright
# for Python (the test extra installs it); no browser is downloaded from anywhere else.
need_chromium() {
    if [ ! -x /usr/bin/chromium ]; then
        echo "installing chromium (Debian package) for the browser tests"
        if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
        $SUDO apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
    fi
}

cmd=${1:-help}
shift || true
case "$cmd" in
    serve)
        setup
        export ROOMCAST_JWT_SECRET="${ROOMCAST_JWT_SECRET:-$DEV_SECRET}"
        echo "Mint a token in another shell: ROOMCAST_JWT_SECRET=$ROOMCAST_JWT_SECRET .venv/bin/roomcast token --user 42"
        export ROOMCAST_API_KEY="${ROOMCAST_API_KEY:-$DEV_API_KEY}"
        echo "Every room is open to every signed-in user (--open-rooms '*'); in production rooms are closed unless a rule opens them (docs/security.md)"
        # Prints the demo page's URL once listening.
        exec .venv/bin/roomcast serve --demo --open-rooms '*' "$@"
        ;;
    test)
        setup
        need_redis
        need_chromium
        .venv/bin/ruff check .
        .venv/bin/mypy
        .venv/bin/lint-imports --no-cache
        exec .venv/bin/pytest "$@"
        ;;
    *)
        echo "usage: ./dev.sh serve [roomcast serve flags] | ./dev.sh test [pytest args]" >&2
        exit 2
        ;;
esac
