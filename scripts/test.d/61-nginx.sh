#!/usr/bin/env bash
# deploy/nginx.conf for real: Debian's nginx in front of two waypost
# processes on one Redis. Checks through nginx that a WebSocket watcher and
# an SSE watcher get every location posted (posts and watchers land on
# different replicas, so fan-out crosses Redis) within 1 s each — an SSE
# event held in a proxy buffer would miss that — and that both replicas
# served traffic. The config is used verbatim except the upstream `server`
# lines and the `listen` port.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
source "$WAYPOST_ROOT/scripts/container-env.sh"
cd "$WAYPOST_ROOT"

apt_install nginx redis-server redis-tools
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
PY="$(deploy_venv)"
cargo build --locked -p waypost-server --bin waypost
BIN="${CARGO_TARGET_DIR:-$WAYPOST_ROOT/target}/debug/waypost"

DIR="$WAYPOST_WORK/nginx-test"
rm -rf "$DIR" && mkdir -p "$DIR"
REDIS_URL="$(start_redis 6392)"
SECRET="nginx-test-secret-$$"
P1="$(free_port)"; P2="$(free_port)"; PN="$(free_port)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$DIR/nginx.pid" ] && kill "$(cat "$DIR/nginx.pid")" 2>/dev/null || true
  redis-cli -p 6392 shutdown nosave >/dev/null 2>&1 || true
}
trap cleanup EXIT

for i in 1 2; do
  port=$([ $i = 1 ] && echo "$P1" || echo "$P2")
  "$BIN" serve --engine redis --redis-url "$REDIS_URL" --listen "127.0.0.1:$port" \
    --jwt-secret "$SECRET" --log-format json >"$DIR/waypost-$i.log" 2>&1 &
  PIDS+=($!)
done
for port in "$P1" "$P2"; do
  curl -fs --retry 50 --retry-delay 0 --retry-connrefused --retry-max-time 20 \
    "http://127.0.0.1:$port/readyz" | grep -q '"engine":"redis"'
done

sed -e "s/server waypost-1:8080/server 127.0.0.1:$P1/" \
    -e "s/server waypost-2:8080/server 127.0.0.1:$P2/" \
    -e "s/listen 8080;/listen 127.0.0.1:$PN;/" deploy/nginx.conf >"$DIR/nginx.conf"
grep -q "127.0.0.1:$P1" "$DIR/nginx.conf" && grep -q "127.0.0.1:$P2" "$DIR/nginx.conf" \
  && grep -q "listen 127.0.0.1:$PN" "$DIR/nginx.conf" || { echo "nginx.conf rewrite failed" >&2; exit 1; }
mkdir -p "$DIR/logs"
GLOBALS="pid $DIR/nginx.pid; error_log $DIR/error.log warn;"
"$NGINX" -t -q -p "$DIR" -c "$DIR/nginx.conf" -g "$GLOBALS"
"$NGINX" -p "$DIR" -c "$DIR/nginx.conf" -g "$GLOBALS"
BASE="http://127.0.0.1:$PN"
curl -fsS --retry 30 --retry-delay 0 --retry-connrefused --retry-max-time 10 "$BASE/nginx-health" >/dev/null
curl -fsS "$BASE/readyz" | grep -q '"engine":"redis"'

"$PY" tests/deploy/client.py track --base "$BASE" --secret "$SECRET" --sse --rounds 10 --max-latency 1.0

# Both replicas took part: one holds watchers (deliveries), the other took
# posts (ingest) or watchers, or both did both.
for port in "$P1" "$P2"; do
  served="$(curl -fsS "http://127.0.0.1:$port/metrics" | awk '
    /^waypost_(deliveries|ingest_requests)_total/ {s += $NF} END {print s + 0}')"
  [ "$served" -gt 0 ] || { echo "replica on $port served nothing through nginx" >&2; exit 1; }
  log "replica :$port served $served deliveries + ingest requests"
done
# JSON logs from both processes (apart from the "listening on" line).
cat "$DIR"/waypost-*.log | grep -v '^listening on ' | "$PY" -c '
import json, sys
n = 0
for l in sys.stdin:
    if l.strip():
        json.loads(l); n += 1
assert n > 0
print(f"{n} JSON log lines")'
log "nginx: WebSocket + SSE through two replicas on Redis: ok"
