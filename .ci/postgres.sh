#!/usr/bin/env bash
# Install what the PostgreSQL storage tests need: Debian's postgresql server package (the
# tests start and stop their own server on loopback) and the psycopg driver (the
# 'postgres' extra, also part of 'all'). Called by .ci/run before `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql
fi
if [ -x .venv/bin/pip ]; then
    .venv/bin/pip install --quiet 'psycopg[binary]>=3.1'
fi
