#!/usr/bin/env bash
# Backtests the night forecast fitted from a past night: runs the full
# double11 rehearsal for a past seed and for five more (each against a
# fresh `mall serve` with the example channels), then forecasts each night's
# peak of attempted requests from the past night and the signals left before
# its own opening, and prints the errors. About 10 minutes on 2 cores.
#
#   ./scripts/night-backtest.sh [OUT_DIR] [PAST_SEED] [SEEDS...]
set -euo pipefail
out=${1:-night-backtest}
past=${2:-11}
shift 2 2>/dev/null || true
seeds=${*:-12 13 14 15 16}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q -p mall --manifest-path "$root/Cargo.toml"
mall="$root/target/release/mall"
channels="$root/crates/mall-provider-sim/channels.example.toml"
token=night-backtest-admin-token-0123456789
mkdir -p "$out"
"$mall" channels --config "$channels" > "$out/channels.log" 2>&1 &
channels_pid=$!
trap 'kill $channels_pid 2>/dev/null || true' EXIT
for seed in $past $seeds; do
  dir="$out/seed-$seed"
  rm -rf "$dir" && mkdir -p "$dir"
  MALL_ADMIN_TOKEN=$token MALL_LOG=warn "$mall" serve --channels "$channels" \
    --hold-timeout 20s --data "$dir/data" > "$dir/serve.log" 2>&1 &
  serve_pid=$!
  until curl -sf http://127.0.0.1:8080/healthz > /dev/null; do sleep 0.2; done
  MALL_ADMIN_TOKEN=$token "$mall" rush --scenario double11 --seed "$seed" \
    --target http://127.0.0.1:8080 --out "$dir" > "$dir/rush.log" 2>&1 || true
  kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true
  echo "seed $seed: $(grep -E '^AUDIT' "$dir/rush.log" | cut -c1-60)"
done
for seed in $seeds; do
  echo "== night $seed, fitted from night $past"
  "$mall" forecast night --past-report "$out/seed-$past/rush-double11.json" \
    --past-events "$out/seed-$past/data/events" \
    --events "$out/seed-$seed/data/events" --report "$out/seed-$seed/rush-double11.json"
done
