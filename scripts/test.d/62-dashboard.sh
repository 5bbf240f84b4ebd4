#!/usr/bin/env bash
# The live dashboard (GET /) in Debian's headless Chromium driven by
# playwright-core (tests/dashboard): a posted location shows up on the page
# over SSE, then a watcher count, message rates and a vendor notification.
# Screenshot: .work/dashboard.png (not committed).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
source "$WAYPOST_ROOT/scripts/container-env.sh"
cd "$WAYPOST_ROOT"

apt_install chromium fonts-dejavu-core
command -v node >/dev/null || { echo "node is required (Node 20)" >&2; exit 1; }
(cd tests/dashboard && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
cargo build --locked -p waypost-server --bin waypost
BIN="${CARGO_TARGET_DIR:-$WAYPOST_ROOT/target}/debug/waypost"

SECRET="dashboard-test-secret-$$"
PORT="$(free_port)"
LOG="$WAYPOST_WORK/dashboard-server.log"
"$BIN" serve --listen "127.0.0.1:$PORT" --jwt-secret "$SECRET" >"$LOG" 2>&1 &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null || true' EXIT
curl -fs --retry 50 --retry-delay 0 --retry-connrefused --retry-max-time 20 \
  "http://127.0.0.1:$PORT/healthz" >/dev/null

DRIVER_ID="d-dash-$$"
token() { "$BIN" token --jwt-secret "$SECRET" --ttl 10m "$@"; }
export WAYPOST_BASE="http://127.0.0.1:$PORT" DRIVER_ID
export SERVICE_TOKEN="$(token --sub ops --role service)"
export DRIVER_TOKEN="$(token --sub "$DRIVER_ID" --role driver)"
export BUYER_TOKEN="$(token --sub b-dash --role buyer --channels "tracking:$DRIVER_ID")"
export SCREENSHOT="$WAYPOST_WORK/dashboard.png"
rm -f "$SCREENSHOT"
(cd tests/dashboard && node --test dashboard.test.mjs)
[ -s "$SCREENSHOT" ] || { echo "no screenshot" >&2; exit 1; }
log "dashboard: ok (screenshot $SCREENSHOT)"
