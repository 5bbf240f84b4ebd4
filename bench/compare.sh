#!/usr/bin/env bash
# Runs the fixed comparison matrix of issue 7 on this machine and writes the
# tables into BENCHMARKS.md (section "## Fan-out and connections: Waypost vs
# the Node peers").
#
#   bench/compare.sh            full matrix (~30 min): Waypost memory, Waypost
#                               Redis, Waypost Redis x2 processes, Socket.IO
#                               peer x2, ws peer x2
#   bench/compare.sh --smoke    seconds and tiny counts: Waypost memory + the ws
#                               peer, checks the reports, writes nothing to
#                               BENCHMARKS.md (run by scripts/test.d/50-bench-smoke.sh)
#   bench/compare.sh --only waypost-memory,ws-x2   a subset of the matrix
#   bench/compare.sh --scenarios connections,storm --out DIR   some scenarios only,
#                               into an earlier results directory (re-renders it)
#
# Starts its own Redis (port 6399), the servers and the Node peers (a copy of
# ../shared/peers, or $WAYPOST_PEERS, under .work/peers with `npm ci`).
# Reports (one JSON per run) go to .work/bench-results/<time>/.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$WAYPOST_ROOT"

SMOKE=""
ONLY=""
WRITE=1
SCENARIOS="heavy,fanout,broadcast,max,connections,ingest,storm"
OUT_DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1; WRITE="" ;;
    --only) ONLY="$2"; shift ;;
    --scenarios) SCENARIOS="$2"; shift ;;
    --out) OUT_DIR="$2"; shift ;;
    --no-write) WRITE="" ;;
    *) sed -n '2,19p' "$0" >&2; exit 2 ;;
  esac
  shift
done

TARGET_DIR="${CARGO_TARGET_DIR:-$WAYPOST_ROOT/target}"
if [ -n "$SMOKE" ]; then
  PROFILE="${BENCH_PROFILE:-debug}"
  if [ "$PROFILE" = release ]; then cargo build -q --release -p waypost-server -p waypost-bench
  else cargo build -q -p waypost-server -p waypost-bench; fi
else
  PROFILE=release
  log "building release binaries"
  cargo build -q --release -p waypost-server -p waypost-bench
fi
WAYPOST="$TARGET_DIR/$PROFILE/waypost"
BENCH="$TARGET_DIR/$PROFILE/waypost-bench"
STAMP="$(date -u +%Y%m%d-%H%M%S)"
OUT="${OUT_DIR:-$WAYPOST_WORK/bench-results/$STAMP${SMOKE:+-smoke}}"
mkdir -p "$OUT/logs"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

REDIS_PORT=6399
REDIS_URL="$(start_redis "$REDIS_PORT")"
REDIS_PID="$(redis-cli -p "$REDIS_PORT" info server | tr -d '\r' | sed -n 's/^process_id://p')"

# The Node peers: a private copy with its own node_modules (never committed).
PEERS_SRC="${WAYPOST_PEERS:-$WAYPOST_ROOT/../shared/peers}"
PEERS="$WAYPOST_WORK/peers"
setup_peers() {
  command -v node >/dev/null || { echo "node is required for the peers" >&2; return 1; }
  [ -d "$PEERS_SRC" ] || { echo "peers not found at $PEERS_SRC (set WAYPOST_PEERS)" >&2; return 1; }
  if [ ! -f "$PEERS/package-lock.json" ] || ! cmp -s "$PEERS_SRC/package-lock.json" "$PEERS/package-lock.json" \
     || [ "$PEERS_SRC/ws/server.js" -nt "$PEERS/ws/server.js" ]; then
    rm -rf "$PEERS"
    cp -r "$PEERS_SRC" "$PEERS"
    chmod -R u+w "$PEERS"
  fi
  if [ ! -f "$PEERS/node_modules/.package-lock.json" ]; then
    (cd "$PEERS" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  fi
}

PIDS=()
URLS=""
stop_servers() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  PIDS=()
  URLS=""
}
trap stop_servers EXIT

wait_healthy() {
  local url="$1"
  for _ in $(seq 1 150); do
    curl -fsS "$url/healthz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$url did not become healthy" >&2
  return 1
}

# Waypost server flags for benchmarks: every subscriber has its own sub, but
# the broadcast and ingest runs post far more than 20 requests/s per driver.
WAYPOST_FLAGS=(--dev --ingest-requests-per-s 1000000 --max-connections-per-user 100000)
waypost_cmd() { # ENGINE PORT
  echo "$WAYPOST serve ${WAYPOST_FLAGS[*]} --engine $1 --redis-url $REDIS_URL --listen 127.0.0.1:$2"
}

start_servers() { # NAME -> sets PIDS, URLS, TARGET
  local name="$1" ports=() kind="" engine=""
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  case "$name" in
    waypost-memory) TARGET=waypost engine=memory ports=(8181) ;;
    waypost-redis) TARGET=waypost engine=redis ports=(8181) ;;
    waypost-redis-x2) TARGET=waypost engine=redis ports=(8181 8182) ;;
    socketio-x2) TARGET=socketio kind=socketio ports=(3001 3002) ;;
    ws-x2) TARGET=ws kind=ws ports=(3101 3102) ;;
    *) echo "unknown matrix entry $name" >&2; return 1 ;;
  esac
  for port in "${ports[@]}"; do
    if [ "$TARGET" = waypost ]; then
      # shellcheck disable=SC2046
      $(waypost_cmd "$engine" "$port") >"$OUT/logs/$name-$port.log" 2>&1 &
    else
      (cd "$PEERS" && REDIS_URL="$REDIS_URL" PORT="$port" exec node "$kind/server.js") \
        >"$OUT/logs/$name-$port.log" 2>&1 &
    fi
    PIDS+=($!)
    URLS="${URLS:+$URLS,}http://127.0.0.1:$port"
  done
  for port in "${ports[@]}"; do wait_healthy "http://127.0.0.1:$port"; done
  SERVER_CMDS=()
  for port in "${ports[@]}"; do
    if [ "$TARGET" = waypost ]; then SERVER_CMDS+=(--server-cmd "$(waypost_cmd "$engine" "$port")")
    else SERVER_CMDS+=(--server-cmd "env REDIS_URL=$REDIS_URL PORT=$port node $PEERS/$kind/server.js"); fi
  done
}

pids_csv() { local IFS=,; echo "${PIDS[*]}"; }
want() { [[ ",$SCENARIOS," == *",$1,"* ]]; }

bench() { # FILE SUBCOMMAND ARGS...   (skipped unless the scenario is wanted)
  local file="$1"; shift
  local scen="${file#*.}"; scen="${scen%.json}"; scen="${scen%%-*}"
  [ -n "$SMOKE" ] || want "$scen" || return 0
  log "$(basename "$file" .json): waypost-bench $*"
  local sub="$1"; shift
  if "$BENCH" "$sub" --json "$@" >"$OUT/$file.tmp" 2>>"$OUT/logs/bench.log"; then
    mv "$OUT/$file.tmp" "$OUT/$file"
  else
    echo "  failed (see $OUT/logs/bench.log)" >&2
    rm -f "$OUT/$file.tmp"
    return 1
  fi
  # The exact command, for the report.
  echo "waypost-bench $sub $*" >"$OUT/${file%.json}.cmd"
}

run_entry() {
  local name="$1"
  start_servers "$name"
  local common=(--target "$TARGET" --url "$URLS" --server-pid "$(pids_csv)" --label "$name")
  local n_proc=${#PIDS[@]}
  URLS_SAVED="$URLS"
  if [ -n "$SMOKE" ]; then
    bench "$name.fanout.json" fanout "${common[@]}" --subscribers 200 --drivers 20 --rate 100 \
      --duration 2 --warmup 1 --drain 1 --workers 2 || FAILED+=("$name fanout")
    bench "$name.connections.json" connections "${common[@]}" --count 300 --hold 1 || FAILED+=("$name connections")
    if [ "$TARGET" = waypost ]; then
      bench "$name.ingest.json" ingest "${common[@]}" --drivers 4 --batch 100 --duration 2 || FAILED+=("$name ingest")
    fi
    stop_servers
    bench "$name.storm.json" storm --target "$TARGET" --url "$URLS_SAVED" --label "$name" --clients 200 \
      --backoff-base-ms 200 --deadline 20 --log-dir "$OUT/logs" "${SERVER_CMDS[@]}" || FAILED+=("$name storm")
    return 0
  fi
  # 1. The peers' recorded scenarios ("heavy" and "fanout"), 20 s measured after 5 s warm-up.
  bench "$name.heavy.json" fanout "${common[@]}" --subscribers 10000 --drivers 1000 --rate 1000 \
    --duration 20 --warmup 5 || FAILED+=("$name heavy")
  bench "$name.fanout.json" fanout "${common[@]}" --subscribers 10000 --drivers 100 --rate 500 \
    --duration 20 --warmup 5 || FAILED+=("$name fanout")
  # 2. Broadcast: one driver, 10,000 watchers, 100 posts/s = 1M deliveries/s.
  bench "$name.broadcast.json" fanout "${common[@]}" --subscribers 10000 --drivers 1 --rate 100 \
    --duration 10 --warmup 2 --drain 5 || FAILED+=("$name broadcast")
  # 3. Maximum sustained deliveries/s with p99 < 50 ms and no loss: 100 watchers
  #    per driver, raising the post rate until a step misses (MAX_RATES).
  want max && for rate in ${MAX_RATES:-100 200 300 500 700 1000 1400 2000 4000 8000}; do
    bench "$name.max-$rate.json" fanout "${common[@]}" --subscribers 10000 --drivers 100 --rate "$rate" \
      --duration 10 --warmup 2 --drain 5 || { FAILED+=("$name max-$rate"); break; }
    python3 - "$OUT/$name.max-$rate.json" <<'EOF' || break
import json, sys
r = json.load(open(sys.argv[1]))
ok = r["latency_ms"]["p99"] < 50 and r["deliveries"]["lost"] == 0
sys.exit(0 if ok else 1)
EOF
  done
  # 4. Idle connections: ~18,000 per server process (hard limit 20,000 files),
  #    on fresh server processes (RSS before = a server that never held any).
  if want connections; then
    stop_servers
    start_servers "$name"
    common=(--target "$TARGET" --url "$URLS" --server-pid "$(pids_csv)" --label "$name")
    bench "$name.connections.json" connections "${common[@]}" --count $((18000 * n_proc)) --drivers 1000 \
    --hold 10 --source-ips 8 || FAILED+=("$name connections")
  fi
  # 5. Ingest (Waypost only): batches of 100.
  if [ "$TARGET" = waypost ] && want ingest; then
    bench "$name.ingest.json" ingest "${common[@]}" --drivers 50 --batch 100 --concurrency 64 \
      --duration 10 || FAILED+=("$name ingest")
  fi
  stop_servers
  # 6. Reconnect storm: 20,000 clients (two server processes; memory and
  #    single-process Redis entries skip it, see waypost-redis-x2).
  if [ "$n_proc" -ge 2 ] && want storm; then
    bench "$name.storm.json" storm --target "$TARGET" --url "$URLS_SAVED" --label "$name" --clients 20000 \
      --connect-timeout 10 --deadline 90 --log-dir "$OUT/logs" "${SERVER_CMDS[@]}" || FAILED+=("$name storm")
  fi
}

ENTRIES=(waypost-memory waypost-redis waypost-redis-x2 socketio-x2 ws-x2)
[ -n "$SMOKE" ] && ENTRIES=(waypost-memory ws-x2)
[ -n "$ONLY" ] && IFS=, read -r -a ENTRIES <<<"$ONLY"
FAILED=()
for e in "${ENTRIES[@]}"; do
  case "$e" in socketio-*|ws-*) setup_peers ;; esac
  run_entry "$e"
done

# Versions and machine for the report.
{
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "nproc=$(nproc)"
  echo "cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
  echo "mem=$(free -g | awk '/^Mem:/{print $2" GiB"}')"
  echo "kernel=$(uname -r)"
  echo "waypost=$("$WAYPOST" --version 2>/dev/null) ($(git rev-parse --short HEAD 2>/dev/null))"
  echo "rustc=$(rustc --version)"
  echo "node=$(node --version 2>/dev/null || echo none)"
  echo "redis=$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')"
  if [ -f "$PEERS/node_modules/.package-lock.json" ]; then
    echo "peers=$(cd "$PEERS" && node -e 'const l=require("./package-lock.json").packages;console.log(["express","socket.io","@socket.io/redis-adapter","redis","ws","ioredis"].map(n=>n+" "+(l["node_modules/"+n]||{}).version).join(", "))')"
  fi
  echo "profile=$PROFILE"
} >"$OUT/env.txt"

if [ -n "$SMOKE" ]; then
  python3 bench/report.py check "$OUT"
else
  python3 bench/report.py render "$OUT" >"$OUT/section.md"
  if [ -n "$WRITE" ]; then
    python3 bench/report.py splice "$OUT/section.md" BENCHMARKS.md
    log "wrote BENCHMARKS.md (reports in $OUT)"
  fi
fi
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "failed runs: ${FAILED[*]}" >&2
  exit 1
fi
