#!/usr/bin/env bash
# The live dashboard (GET /) in Debian's headless Chromium driven by
# playwright-core (tests/dashboard): three drivers post and appear on the
# map (positions checked through the page's hook, colours in a screenshot of
# the canvas), a buyer watches, the sparklines fill, and the user panel looks
# the buyer up and disconnects and revokes it by clicking its buttons.
# Screenshot: .work/dashboard.png (docs/dashboard.png is one such, committed).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
source "$WAYPOST_ROOT/scripts/container-env.sh"
cd "$WAYPOST_ROOT"

apt_install chromium fonts-dejavu-core
# Node (Debian's nodejs/npm when missing; playwright-core needs Node >= 18).
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
(cd tests/dashboard && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
cargo build --locked -p waypost-server --bin waypost
BIN="${CARGO_TARGET_DIR:-$WAYPOST_ROOT/target}/debug/waypost"

SECRET="dashboard-test-secret-$$"
PORT="$(free_port)"
LOG="$WAYPOST_WORK/dashboard-server.log"
"$BIN" serve --listen "127.0.0.1:$PORT" --jwt-secret "$SECRET" >"$LOG" 2>&1 &
SERVER_PID=$!
# A second one with map tiles from a tile server the test itself runs.
TILES_PORT="$(free_port)"
TILE_SERVER_PORT="$(free_port)"
"$BIN" serve --listen "127.0.0.1:$TILES_PORT" --jwt-secret "$SECRET" \
  --dashboard-tiles "http://127.0.0.1:$TILE_SERVER_PORT/{z}/{x}/{y}.png" \
  >"$WAYPOST_WORK/dashboard-tiles-server.log" 2>&1 &
TILES_PID=$!
trap 'kill $SERVER_PID $TILES_PID 2>/dev/null || true' EXIT
for p in "$PORT" "$TILES_PORT"; do
  curl -fs --retry 50 --retry-delay 0 --retry-connrefused --retry-max-time 20 \
    "http://127.0.0.1:$p/healthz" >/dev/null
done

token() { "$BIN" token --jwt-secret "$SECRET" --ttl 10m "$@"; }
DRIVER_IDS="" DRIVER_TOKENS=""
for n in 1 2 3; do
  id="d-dash$n-$$"
  DRIVER_IDS="${DRIVER_IDS:+$DRIVER_IDS,}$id"
  DRIVER_TOKENS="${DRIVER_TOKENS:+$DRIVER_TOKENS,}$(token --sub "$id" --role driver)"
done
FIRST_DRIVER="${DRIVER_IDS%%,*}"
export TILES_BASE="http://127.0.0.1:$TILES_PORT" TILE_SERVER_PORT
export WAYPOST_BASE="http://127.0.0.1:$PORT" DRIVER_IDS DRIVER_TOKENS BUYER_ID="b-dash-$$"
export SERVICE_TOKEN="$(token --sub ops --role service)"
export BUYER_TOKEN="$(token --sub "$BUYER_ID" --role buyer --channels "tracking:$FIRST_DRIVER")"
export SCREENSHOT="$WAYPOST_WORK/dashboard.png"
rm -f "$SCREENSHOT"
(cd tests/dashboard && node --test dashboard.test.mjs)
[ -s "$SCREENSHOT" ] || { echo "no screenshot" >&2; exit 1; }
log "dashboard: ok (screenshot $SCREENSHOT)"
