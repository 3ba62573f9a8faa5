#!/usr/bin/env bash
# Sets up and runs every test of mall: installs what the tests need (Redis
# and PostgreSQL: mall's second store, and peers `mall bench stock` is
# checked against; the tests start their own throwaway servers on loopback; Chromium and playwright-core
# for the dashboard's browser test; Python's venv for schemathesis, which
# scripts/schemathesis.sh installs from PyPI on first use), builds, and runs
# them all.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
# schemathesis (the API fuzz test) is installed from PyPI into a virtualenv.
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3 python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}"
fi
# The packages may start system-wide servers; the tests use their own.
(service redis-server stop || true; service postgresql stop || true) >/dev/null 2>&1

# playwright-core drives Debian's Chromium (no browser download).
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix tests/browser --no-audit --no-fund

# A test run builds from scratch once: incremental caches would only fill the
# disk (they doubled target/ on a clean checkout).
export CARGO_INCREMENTAL=0
cargo build --workspace --all-targets

# One PostgreSQL for the whole run, on loopback, gone at the end: the store
# tests that run on both backends make their databases on it.
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
pgdir=$(mktemp -d)
as_pg=()
if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$pgdir"; as_pg=(runuser -u postgres --); fi
pgport=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${as_pg[@]}" "$pgbin/initdb" -D "$pgdir/data" -A trust -U mall --no-sync >/dev/null
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -w \
  -o "-p $pgport -k $pgdir -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
trap '"${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -m immediate -w stop >/dev/null 2>&1; rm -rf "$pgdir"' EXIT
export MALL_TEST_PG="host=127.0.0.1 port=$pgport user=mall dbname=postgres"

cargo test --workspace
# The HTTP tests and the end-to-end tests (payments, kill -9, the probe's
# regressions) again, with everything durable in PostgreSQL. `--workspace`
# keeps the first pass's feature set, so nothing is rebuilt.
MALL_TEST_STORE=postgres cargo test --workspace --test api --test hardening --test payments --test crash
