#!/usr/bin/env bash
# Runs the fixed comparison matrix of issue 7 on this machine and writes the
# tables into BENCHMARKS.md (section "## Fan-out and connections: Waypost vs
# the Node peers").
#
#   bench/compare.sh            full matrix (~90 min): Waypost memory (also with
#                               pings pushed out of the window), Waypost Redis,
#                               Waypost Redis x2 processes, Socket.IO peer x2,
#                               ws peer x2, the floor (`waypost-bench floor`)
#   bench/compare.sh --smoke    seconds and tiny counts: Waypost memory, the ws
#                               peer and the floor, checks the reports, writes
#                               nothing to BENCHMARKS.md (run by scripts/test.d/50-bench-smoke.sh)
#   bench/compare.sh --only waypost-memory,floor   a subset of the matrix
#                               (waypost-nats-x2: NATS bus + Redis stores, 2
#                               processes; not in the default matrix)
#   bench/compare.sh --scenarios heavy,tail --out DIR   some scenarios only
#                               (heavy fanout broadcast max tail connections
#                               ingest storm), into an earlier results
#                               directory (re-renders it)
#   bench/compare.sh --loadgens node   the fan-out scenarios with one load
#                               generator only (rust = waypost-bench, node =
#                               the peers' loadgen; default both)
#   bench/prio.sh bench/compare.sh ...   on a shared host: the whole run at
#                               high CPU priority (see bench/prio.sh)
#
# Starts its own Redis (port $BENCH_REDIS_PORT, default 6399), for
# waypost-nats-x2 its own nats-server (port $BENCH_NATS_PORT, default 4299), the servers and
# the Node peers (a copy of ../shared/peers, or $WAYPOST_PEERS, under
# .work/peers with `npm ci`). Server ports: Waypost 8181/8182, Socket.IO
# 3001/3002, ws 3101/3102, floor 8211; with BENCH_PORT_BASE=B: B+1/B+2,
# B+11/B+12, B+21/B+22, B+31.
# Reports (one JSON per run) go to .work/bench-results/<time>/.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$WAYPOST_ROOT"

SMOKE=""
ONLY=""
WRITE=1
SCENARIOS="heavy,fanout,broadcast,max,tail,connections,ingest,storm"
LOADGENS="rust,node"
OUT_DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1; WRITE="" ;;
    --only) ONLY="$2"; shift ;;
    --scenarios) SCENARIOS="$2"; shift ;;
    --loadgens) LOADGENS="$2"; shift ;;
    --out) OUT_DIR="$2"; shift ;;
    --no-write) WRITE="" ;;
    *) sed -n '2,24p' "$0" >&2; exit 2 ;;
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
  # BENCH_SKIP_BUILD=1: use the release binaries already built (e.g. when the
  # target dir's waypost is another commit's build and WAYPOST_BIN points at a
  # copy, or when the run itself is niced and the build should not be).
  if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
    log "building release binaries"
    cargo build -q --release -p waypost-server -p waypost-bench
  fi
fi
# WAYPOST_BIN: another server binary (WAYPOST_BENCH_BIN: another waypost-bench) (e.g. a build of an earlier commit, to
# compare before and after a change back to back).
WAYPOST="${WAYPOST_BIN:-$TARGET_DIR/$PROFILE/waypost}"
BENCH="${WAYPOST_BENCH_BIN:-$TARGET_DIR/$PROFILE/waypost-bench}"
STAMP="$(date -u +%Y%m%d-%H%M%S)"
OUT="${OUT_DIR:-$WAYPOST_WORK/bench-results/$STAMP${SMOKE:+-smoke}}"
mkdir -p "$OUT/logs"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

REDIS_PORT="${BENCH_REDIS_PORT:-6399}"
PORT_BASE="${BENCH_PORT_BASE:-}"
if [ -n "$PORT_BASE" ]; then
  WP_PORTS=($((PORT_BASE + 1)) $((PORT_BASE + 2))) SIO_PORTS=($((PORT_BASE + 11)) $((PORT_BASE + 12)))
  WS_PORTS=($((PORT_BASE + 21)) $((PORT_BASE + 22))) FLOOR_PORT=$((PORT_BASE + 31))
else
  WP_PORTS=(8181 8182) SIO_PORTS=(3001 3002) WS_PORTS=(3101 3102) FLOOR_PORT=8211
fi
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
trap 'stop_servers; stop_nats' EXIT

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
EXTRA_FLAGS=""
waypost_cmd() { # ENGINE PORT
  echo "$WAYPOST serve ${WAYPOST_FLAGS[*]}${EXTRA_FLAGS:+ $EXTRA_FLAGS} --engine $1 --redis-url $REDIS_URL --listen 127.0.0.1:$2"
}

# nats-server for waypost-nats-x2, started on first use, stopped at exit.
NATS_PORT="${BENCH_NATS_PORT:-4299}"
NATS_PID=""
start_nats() {
  [ -n "$NATS_PID" ] && return 0
  apt_install nats-server
  local bin
  bin="$(command -v nats-server || echo /usr/sbin/nats-server)"
  "$bin" -a 127.0.0.1 -p "$NATS_PORT" >"$OUT/logs/nats-server.log" 2>&1 &
  NATS_PID=$!
  for _ in $(seq 1 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nats-server on port $NATS_PORT did not start (see $OUT/logs/nats-server.log)" >&2
  return 1
}
stop_nats() { if [ -n "$NATS_PID" ]; then kill -TERM "$NATS_PID" 2>/dev/null || true; fi; NATS_PID=""; }

start_servers() { # NAME -> sets PIDS, URLS, TARGET
  local name="$1" ports=() kind="" engine=""
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  EXTRA_FLAGS=""
  case "$name" in
    waypost-memory) TARGET=waypost engine=memory ports=("${WP_PORTS[0]}") ;;
    # Pings pushed out of the measured window (issue 23: what pings cost).
    waypost-memory-noping) TARGET=waypost engine=memory ports=("${WP_PORTS[0]}") EXTRA_FLAGS="--ping-interval 600s" ;;
    waypost-redis) TARGET=waypost engine=redis ports=("${WP_PORTS[0]}") ;;
    waypost-redis-x2) TARGET=waypost engine=redis ports=("${WP_PORTS[@]}") ;;
    waypost-nats-x2) TARGET=waypost engine=redis ports=("${WP_PORTS[@]}")
      EXTRA_FLAGS="--bus nats --nats-url nats://127.0.0.1:$NATS_PORT"; start_nats ;;
    socketio-x2) TARGET=socketio kind=socketio ports=("${SIO_PORTS[@]}") ;;
    ws-x2) TARGET=ws kind=ws ports=("${WS_PORTS[@]}") ;;
    floor) TARGET=waypost kind=floor ports=("$FLOOR_PORT") ;;
    *) echo "unknown matrix entry $name" >&2; return 1 ;;
  esac
  kind_of_entry="$kind"
  for port in "${ports[@]}"; do
    if [ "$kind" = floor ]; then
      "$BENCH" floor --listen "127.0.0.1:$port" >"$OUT/logs/$name-$port.log" 2>&1 &
    elif [ "$TARGET" = waypost ]; then
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
    if [ "$kind" = floor ]; then SERVER_CMDS+=(--server-cmd "$BENCH floor --listen 127.0.0.1:$port")
    elif [ "$TARGET" = waypost ]; then SERVER_CMDS+=(--server-cmd "$(waypost_cmd "$engine" "$port")")
    else SERVER_CMDS+=(--server-cmd "env REDIS_URL=$REDIS_URL PORT=$port node $PEERS/$kind/server.js"); fi
  done
}

pids_csv() { local IFS=,; echo "${PIDS[*]}"; }
want() { [[ ",$SCENARIOS," == *",$1,"* ]]; }
want_loadgen() { [[ ",$LOADGENS," == *",$1,"* ]]; }

# Host load at the start and end of every run (the host may be shared):
# load average and CPU pressure, one line each into $OUT/load.txt.
record_load() { # FILE start|end
  local psi=""
  [ -r /proc/pressure/cpu ] && psi="$(head -1 /proc/pressure/cpu)"
  echo "$(date -u +%H:%M:%S) $1 $2 loadavg=$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' ,) cpu_${psi:-pressure n/a}" \
    >>"$OUT/load.txt"
}

bench() { # FILE SUBCOMMAND ARGS...   (skipped unless the scenario is wanted)
  local file="$1"; shift
  local scen="${file#*.}"; scen="${scen%.json}"; scen="${scen%%-*}"
  [ -n "$SMOKE" ] || want "$scen" || return 0
  log "$(basename "$file" .json): waypost-bench $*"
  local sub="$1"; shift
  record_load "$file" start
  if "$BENCH" "$sub" --json "$@" >"$OUT/$file.tmp" 2>>"$OUT/logs/bench.log"; then
    record_load "$file" end
    mv "$OUT/$file.tmp" "$OUT/$file"
  else
    echo "  failed (see $OUT/logs/bench.log)" >&2
    rm -f "$OUT/$file.tmp"
    return 1
  fi
  # The exact command, for the report.
  echo "waypost-bench $sub $*" >"$OUT/${file%.json}.cmd"
}

# Sum of a Prometheus counter over the Waypost processes of the entry (0 for
# the floor and the peers, which have no such metric).
metric_sum() { # NAME
  local total=0 u v
  if [ "$TARGET" != waypost ] || [ "$KIND" = floor ]; then echo 0; return; fi
  for u in ${URLS//,/ }; do
    v="$(curl -fsS --max-time 5 "$u/metrics" 2>/dev/null \
      | awk -v n="$1" '$1 ~ "^"n"([{]|$)" {s += $2} END {printf "%d", s}')"
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

# The peers' Node load generator (`loadgen/index.js` of the copied peers) on
# the same servers: FILE SUBSCRIBERS DRIVERS RATE DURATION WARMUP DRAIN [WORKERS].
# Accepted fixes the server did not broadcast because a newer one of the
# driver was already live (its POSTs overtook each other: this client posts
# open loop) are read from `waypost_fixes_superseded_total` before and after
# the run (warm-up included) and written into the report as
# `deliveries.superseded` (the deliveries those posts would have made, at
# most `lost`) and `deliveries.lost_net` = lost - superseded.
node_bench() {
  local file="$1" subs="$2" drivers="$3" rate="$4" duration="$5" warmup="$6" drain="$7" workers="${8:-0}"
  local proto watch="" i=0 p
  case "$TARGET" in waypost) proto=waypost ;; ws) proto=ws-json ;; socketio) proto=socketio ;; esac
  for p in "${PIDS[@]}"; do watch="${watch:+$watch,}server$i=$p"; i=$((i + 1)); done
  local args=(--protocol "$proto" --sub "$URLS" --pub "$URLS" --subscribers "$subs" --drivers "$drivers"
    --rate "$rate" --duration "$duration" --warmup "$warmup" --drain "$drain" --workers "$workers"
    --watch "$watch" --label "${file%%.*}" --quiet)
  log "$(basename "$file" .json): node loadgen/index.js ${args[*]}"
  local before after
  before="$(metric_sum waypost_fixes_superseded_total)"
  record_load "$file" start
  if (cd "$PEERS" && timeout 600 node loadgen/index.js "${args[@]}") >"$OUT/$file.tmp" 2>>"$OUT/logs/node-loadgen.log"; then
    record_load "$file" end
    after="$(metric_sum waypost_fixes_superseded_total)"
    python3 - "$OUT/$file.tmp" $((after - before)) <<'EOF'
import json, sys
path, posts = sys.argv[1], int(sys.argv[2])
r = json.load(open(path))
d, c = r["deliveries"], r["config"]
per_post = c["subscribers"] / max(1, c["drivers"])
d["superseded_posts"] = posts
d["superseded"] = min(d["lost"], round(posts * per_post))
d["lost_net"] = d["lost"] - d["superseded"]
r["kind"] = "node-fanout"
json.dump(r, open(path, "w"))
EOF
    mv "$OUT/$file.tmp" "$OUT/$file"
  else
    echo "  failed (see $OUT/logs/node-loadgen.log)" >&2
    rm -f "$OUT/$file.tmp"
    return 1
  fi
  echo "node loadgen/index.js ${args[*]}" >"$OUT/${file%.json}.cmd"
}

# One fan-out scenario with each wanted load generator:
# SCEN SUBSCRIBERS DRIVERS RATE DURATION WARMUP DRAIN.
fan() {
  local scen="$1" subs="$2" drivers="$3" rate="$4" duration="$5" warmup="$6" drain="$7"
  [ -n "$SMOKE" ] || want "$scen" || return 0
  if want_loadgen rust; then
    # shellcheck disable=SC2086
    bench "$NAME.$scen.json" fanout "${COMMON[@]}" --subscribers "$subs" --drivers "$drivers" --rate "$rate" \
      --duration "$duration" --warmup "$warmup" --drain "$drain" ${SMOKE:+--workers 2} || FAILED+=("$NAME $scen")
  fi
  if want_loadgen node; then
    # shellcheck disable=SC2086
    node_bench "$NAME.$scen-node.json" "$subs" "$drivers" "$rate" "$duration" "$warmup" "$drain" ${SMOKE:+2} \
      || FAILED+=("$NAME $scen-node")
  fi
}

# p99 < 50 ms (PASS_P99_MS), nothing lost, and the posts kept up (95 % of the
# scheduled rate). A host too small for any step to pass 50 ms (the broadcast
# tail: one post = 10,000 writes in one burst) can still be laddered to its
# saturation with e.g. PASS_P99_MS=500.
passes() { # REPORT.json
  python3 - "$1" "${PASS_P99_MS:-50}" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
d = r["deliveries"]
ok = (r["latency_ms"]["p99"] < float(sys.argv[2]) and d.get("lost_net", d["lost"]) == 0
      and r["updates"]["achieved_rate_per_s"] >= 0.95 * r["params"]["rate"])
sys.exit(0 if ok else 1)
EOF
}

run_entry() {
  local name="$1"
  NAME="$name"
  start_servers "$name"
  KIND="$kind_of_entry"
  COMMON=(--target "$TARGET" --url "$URLS" --server-pid "$(pids_csv)" --label "$name")
  local common=("${COMMON[@]}")
  local n_proc=${#PIDS[@]}
  URLS_SAVED="$URLS"
  if [ -n "$SMOKE" ]; then
    fan fanout 200 20 100 2 1 1
    bench "$name.connections.json" connections "${common[@]}" --count 300 --hold 1 || FAILED+=("$name connections")
    if [ "$TARGET" = waypost ] && [ "$KIND" != floor ]; then
      bench "$name.ingest.json" ingest "${common[@]}" --drivers 4 --batch 100 --duration 2 || FAILED+=("$name ingest")
    fi
    stop_servers
    if [ "$KIND" != floor ]; then
      bench "$name.storm.json" storm --target "$TARGET" --url "$URLS_SAVED" --label "$name" --clients 200 \
        --backoff-base-ms 200 --deadline 20 --log-dir "$OUT/logs" "${SERVER_CMDS[@]}" || FAILED+=("$name storm")
    fi
    return 0
  fi
  # 1. The peers' recorded scenarios ("heavy" and "fanout"), 20 s measured after 5 s warm-up.
  fan heavy 10000 1000 1000 20 5 3
  # The entry without pings exists to compare heavy with and without them.
  if [ "$name" = waypost-memory-noping ]; then stop_servers; return 0; fi
  fan fanout 10000 100 500 20 5 3
  # 2. Broadcast: one driver, 10,000 watchers, 100 posts/s = 1M deliveries/s.
  fan broadcast 10000 1 100 10 2 5
  # 3. Maximum sustained deliveries/s with p99 < 50 ms and no loss: 100 watchers
  #    per driver, raising the post rate until a step misses (MAX_RATES).
  if want max && want_loadgen rust; then
    for rate in ${MAX_RATES:-100 200 300 500 700 1000 1400 2000 4000 8000}; do
      bench "$name.max-$rate.json" fanout "${common[@]}" --subscribers 10000 --drivers 100 --rate "$rate" \
        --duration 10 --warmup 2 --drain 5 || { FAILED+=("$name max-$rate"); break; }
      passes "$OUT/$name.max-$rate.json" || break
    done
  fi
  # 4. Broadcast tail: one driver watched by 10,000, the post rate raised
  #    until a step misses p99 < 50 ms, loses a delivery or falls behind
  #    the scheduled rate (TAIL_RATES).
  if want tail && want_loadgen rust; then
    for rate in ${TAIL_RATES:-10 25 50 100 200 400 800}; do
      bench "$name.tail-$rate.json" fanout "${common[@]}" --subscribers 10000 --drivers 1 --rate "$rate" \
        --duration "${TAIL_SECONDS:-10}" --warmup 2 --drain 5 || { FAILED+=("$name tail-$rate"); break; }
      passes "$OUT/$name.tail-$rate.json" || break
    done
  fi
  # 5. Idle connections: ~18,000 per server process (hard limit 20,000 files),
  #    on fresh server processes (RSS before = a server that never held any).
  if want connections; then
    stop_servers
    start_servers "$name"
    common=(--target "$TARGET" --url "$URLS" --server-pid "$(pids_csv)" --label "$name")
    bench "$name.connections.json" connections "${common[@]}" --count $((18000 * n_proc)) --drivers 1000 \
    --hold 10 --source-ips 8 || FAILED+=("$name connections")
  fi
  # 6. Ingest (Waypost only): batches of 100.
  if [ "$TARGET" = waypost ] && [ "$KIND" != floor ] && want ingest; then
    bench "$name.ingest.json" ingest "${common[@]}" --drivers 50 --batch 100 --concurrency 64 \
      --duration 10 || FAILED+=("$name ingest")
  fi
  stop_servers
  # 7. Reconnect storm: 20,000 clients (two server processes; memory and
  #    single-process Redis entries skip it, see waypost-redis-x2).
  if [ "$n_proc" -ge 2 ] && want storm; then
    bench "$name.storm.json" storm --target "$TARGET" --url "$URLS_SAVED" --label "$name" --clients 20000 \
      --connect-timeout 10 --deadline 90 --log-dir "$OUT/logs" "${SERVER_CMDS[@]}" || FAILED+=("$name storm")
  fi
}

ENTRIES=(waypost-memory waypost-memory-noping waypost-redis waypost-redis-x2 socketio-x2 ws-x2 floor)
[ -n "$SMOKE" ] && ENTRIES=(waypost-memory ws-x2 floor)
[ -n "$ONLY" ] && IFS=, read -r -a ENTRIES <<<"$ONLY"
FAILED=()
for e in "${ENTRIES[@]}"; do
  # The smoke runs the Node load generator once (Waypost memory), not per entry.
  if [ -n "$SMOKE" ]; then
    if [ "$e" = waypost-memory ] && command -v node >/dev/null; then LOADGENS=rust,node; else LOADGENS=rust; fi
  fi
  if [[ "$e" == socketio-* || "$e" == ws-* ]] || want_loadgen node; then setup_peers; fi
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
