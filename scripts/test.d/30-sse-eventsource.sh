#!/usr/bin/env bash
# A real browser-style SSE client (the `eventsource` npm package, WHATWG
# EventSource semantics) on a vendor's notification stream, on the memory
# engine and on Redis: the stream is cut twice by a TCP proxy, the client
# reconnects by itself with Last-Event-ID and must receive every one of 40
# notifications exactly once, in order (tests/sse-client/reconnect.mjs).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
cd "$WAYPOST_ROOT"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt_install nodejs npm
fi
BIN="${CARGO_TARGET_DIR:-$WAYPOST_ROOT/target}/debug/waypost"
[ -x "$BIN" ] || cargo build -q -p waypost-server --bin waypost
(cd tests/sse-client && npm ci --no-audit --no-fund --loglevel=error)

REDIS_URL_FOR_TEST="${WAYPOST_TEST_REDIS_URL:-$(start_redis 6390)}"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

run_on() {
  local engine="$1"; shift
  local log="$WAYPOST_WORK/sse-eventsource-$engine.log"
  local out="$WAYPOST_WORK/sse-eventsource-$engine.out"
  "$BIN" serve --dev --listen 127.0.0.1:0 --engine "$engine" "$@" >"$out" 2>"$log" &
  local pid=$!
  PIDS+=("$pid")
  local addr=""
  for _ in $(seq 1 100); do
    addr="$(sed -n 's/^listening on //p' "$out" | head -1)"
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || { echo "server ($engine) did not start; see $log" >&2; return 1; }
  local vendor="v-sse-$engine-$RANDOM$RANDOM"
  local vtok stok
  vtok="$("$BIN" token --dev --sub "$vendor" --role vendor)"
  stok="$("$BIN" token --dev --sub orders --role service)"
  log "eventsource client on the $engine engine ($addr)"
  (cd tests/sse-client && timeout 90 node reconnect.mjs "http://$addr" "$vendor" "$vtok" "$stok")
  kill "$pid"
}

run_on memory
run_on redis --redis-url "$REDIS_URL_FOR_TEST"
