#!/usr/bin/env bash
# Sets up and runs every test of mall: installs what the tests need (Redis
# and PostgreSQL, the peers `mall bench stock` is checked against; the tests
# start their own throwaway servers on loopback; Chromium and playwright-core
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

cargo build --workspace --all-targets
cargo test --workspace
