#!/usr/bin/env bash
# Runs every test of htmx-sse on this machine, installing what the tests
# need first when it is missing: Chromium (Debian package) for the browser
# tests, redis-server and nats-server (the tests start their own on a free
# loopback port), openssl (test keys), and the pinned npm packages (htmx 2
# and 4, playwright-core).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "need root to run: $*" >&2; exit 1; fi
}

apt_packages=()
command -v chromium >/dev/null 2>&1 || apt_packages+=(chromium)
command -v node >/dev/null 2>&1 || apt_packages+=(nodejs npm)
command -v openssl >/dev/null 2>&1 || apt_packages+=(openssl)
command -v redis-server >/dev/null 2>&1 || apt_packages+=(redis-server)
command -v nats-server >/dev/null 2>&1 || apt_packages+=(nats-server)
if [ ${#apt_packages[@]} -gt 0 ]; then
    echo "==> installing ${apt_packages[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}"
fi

# node_modules is installed from the lock file, again whenever the lock
# file is newer than the installed tree.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    echo "==> npm ci"
    npm ci --no-audit --no-fund
fi

echo "==> cargo test --all-features"
cargo test --all-features "$@"
