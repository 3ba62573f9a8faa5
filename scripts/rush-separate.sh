#!/usr/bin/env bash
# Rehearses a scenario with the server, the payment-channel simulator and
# the load generator as three separate processes on this machine, then
# prints the rush's summary and the CPU each process used. For the numbers
# in the payment issues:
#
#   scripts/rush-separate.sh scenarios/payments-3k.toml
#   scripts/rush-separate.sh double11 --hold-timeout 20s
#
# Extra arguments go to `mall serve`. Uses target/release/mall (build it
# first: cargo build --release -p mall), the example channels, a throwaway
# store, and loopback ports 18101-18103 (channels) and a free one (server).
set -euo pipefail
cd "$(dirname "$0")/.."
SCENARIO=${1:?usage: scripts/rush-separate.sh SCENARIO [serve flags...]}
shift
BIN=${MALL_BIN:-target/release/mall}
SERVE_BIN=${SERVE_BIN:-$BIN} # another build of the server, for a before/after
CHANNELS=crates/mall-provider-sim/channels.example.toml
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mall-rush-separate.XXXXXX")
TOKEN=rush-separate-admin-token-0123456789abcdef
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] && echo "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT
cpu() { # seconds of CPU a process used so far
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.1f", ($14 + $15) / hz }' "/proc/$1/stat"
}
MALL_LOG=error "$BIN" channels --config "$CHANNELS" >"$WORK/channels.log" 2>&1 &
PIDS+=($!); CH=$!
MALL_ADMIN_TOKEN=$TOKEN MALL_LOG=error "$SERVE_BIN" serve --addr "127.0.0.1:$PORT" \
  --data "$WORK/data" --channels "$CHANNELS" --user-rate-per-s 1000000 "$@" \
  >"$WORK/serve.log" 2>&1 &
PIDS+=($!); SV=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done
ch0=$(cpu "$CH"); sv0=$(cpu "$SV")
start=$(date +%s.%N)
rc=0
/usr/bin/time -f "generator: %U s user + %S s system CPU" "$BIN" rush --target "http://127.0.0.1:$PORT" \
  --scenario "$SCENARIO" --admin-token "$TOKEN" --out "$WORK/report" || rc=$?
end=$(date +%s.%N)
echo "wall $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }') s; CPU seconds: server $(awk -v a="$sv0" -v b="$(cpu "$SV")" 'BEGIN { printf "%.1f", b - a }'), channel simulator $(awk -v a="$ch0" -v b="$(cpu "$CH")" 'BEGIN { printf "%.1f", b - a }')"
cp "$WORK"/report/*.json "${RUSH_REPORT_COPY:-/tmp}/" 2>/dev/null || true
exit $rc
