#!/usr/bin/env bash
# Sets up and runs every test of mall. Needs only the Rust toolchain today:
# SQLite is bundled into the binary. (Services for the scale-out backends,
# PostgreSQL and Redis, are installed and started here once those land.)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --all-targets
cargo test --workspace
