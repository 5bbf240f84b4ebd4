#!/usr/bin/env bash
# Server CPU per delivery per WebSocket encoding (issue 22): the `heavy`
# (10,000 watchers, 1,000 drivers, 1,000 posts/s) and `fanout` (10,000
# watchers, 100 drivers, 500 posts/s = 50,000 deliveries/s) scenarios of
# bench/compare.sh, run back to back with `waypost-bench fanout` against a
# fresh release `waypost serve` (memory engine, one process) per encoding,
# and against the floor (`waypost-bench floor`, JSON) with the same load.
# Rounds alternate the order (floor first, then the encodings; the next
# round the reverse) so that drift of a shared host does not favour one.
#
#   bench/encodings.sh                          json,msgpack; heavy,fanout; 2 rounds
#   bench/encodings.sh --encodings json,msgpack,lean   (any value `waypost-bench
#                                               fanout --encoding` takes)
#   bench/encodings.sh --scenarios heavy --rounds 3 --no-floor --out DIR
#   bench/prio.sh bench/encodings.sh ...        on a shared host (see bench/prio.sh)
#
# Prints every command before running it. Writes one JSON report per run,
# its command (.cmd), the host load at the start and end of each run
# (load.txt), env.txt, server logs and table.md (rendered by
# bench/encodings_table.py: deliveries/s, p50/p99, server CPU %, CPU µs
# per delivery, multiple of the floor, bytes per delivered location frame)
# into .work/bench-results/encodings-<time>/ (or --out). Every run is
# bounded (`timeout`, BENCH_RUN_TIMEOUT seconds, default 300).
# Ports: BENCH_PORT_BASE (default 8600) +1 for Waypost, +2 for the floor.
# BENCH_SKIP_BUILD=1 uses the release binaries already built;
# WAYPOST_BIN / WAYPOST_BENCH_BIN point at other binaries.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$WAYPOST_ROOT"

ENCODINGS="json,msgpack"
SCENARIOS="heavy,fanout"
ROUNDS=2
FLOOR=1
OUT_DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --encodings) ENCODINGS="$2"; shift ;;
    --scenarios) SCENARIOS="$2"; shift ;;
    --rounds) ROUNDS="$2"; shift ;;
    --no-floor) FLOOR="" ;;
    --out) OUT_DIR="$2"; shift ;;
    *) sed -n '2,26p' "$0" >&2; exit 2 ;;
  esac
  shift
done
[[ "$ROUNDS" =~ ^[1-9][0-9]?$ ]] || { echo "--rounds: 1-99" >&2; exit 2; }

TARGET_DIR="${CARGO_TARGET_DIR:-$WAYPOST_ROOT/target}"
if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
  log "building release binaries"
  cargo build -q --release -p waypost-server -p waypost-bench
fi
WAYPOST="${WAYPOST_BIN:-$TARGET_DIR/release/waypost}"
BENCH="${WAYPOST_BENCH_BIN:-$TARGET_DIR/release/waypost-bench}"
OUT="${OUT_DIR:-$WAYPOST_WORK/bench-results/encodings-$(date -u +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT/logs"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
BASE="${BENCH_PORT_BASE:-8600}"
WP_PORT=$((BASE + 1)) FLOOR_PORT=$((BASE + 2))
RUN_TIMEOUT="${BENCH_RUN_TIMEOUT:-300}"

IFS=, read -r -a ENCS <<<"$ENCODINGS"
IFS=, read -r -a SCENS <<<"$SCENARIOS"
for e in "${ENCS[@]}"; do
  "$BENCH" fanout --help | grep -qE "^ +- $e:" || { echo "waypost-bench does not know --encoding $e" >&2; exit 2; }
done

# Same flags as bench/compare.sh's waypost-memory entry.
WAYPOST_FLAGS=(serve --dev --ingest-requests-per-s 1000000 --max-connections-per-user 100000 --engine memory)

SERVER_PID=""
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}
trap stop_server EXIT

start_server() { # ENTRY LOGFILE -> SERVER_PID, URL, SERVER_CMD
  local port
  if [ "$1" = floor ]; then
    port=$FLOOR_PORT
    SERVER_CMD=("$BENCH" floor --listen "127.0.0.1:$port")
  else
    port=$WP_PORT
    SERVER_CMD=("$WAYPOST" "${WAYPOST_FLAGS[@]}" --listen "127.0.0.1:$port")
  fi
  echo "+ ${SERVER_CMD[*]}"
  "${SERVER_CMD[@]}" >"$2" 2>&1 &
  SERVER_PID=$!
  URL="http://127.0.0.1:$port"
  for _ in $(seq 1 150); do
    curl -fsS "$URL/healthz" >/dev/null 2>&1 && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "$URL did not become healthy (see $2)" >&2
  return 1
}

record_load() { # FILE start|end
  local psi=""
  [ -r /proc/pressure/cpu ] && psi="$(head -1 /proc/pressure/cpu)"
  echo "$(date -u +%H:%M:%S) $1 $2 loadavg=$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' ,) cpu_${psi:-pressure n/a}" \
    >>"$OUT/load.txt"
}

scenario_args() { # SCENARIO -> the load of bench/compare.sh's scenario
  case "$1" in
    heavy) echo "--subscribers 10000 --drivers 1000 --rate 1000 --duration 20 --warmup 5 --drain 3" ;;
    fanout) echo "--subscribers 10000 --drivers 100 --rate 500 --duration 20 --warmup 5 --drain 3" ;;
    *) echo "unknown scenario $1 (heavy, fanout)" >&2; return 1 ;;
  esac
}

FAILED=()
run_one() { # ROUND SCENARIO ENTRY (floor | waypost-<encoding>)
  local round="$1" scen="$2" entry="$3" enc file
  enc="${entry#waypost-}"
  [ "$entry" = floor ] && enc=json
  file="r$round.$scen.$entry"
  start_server "$entry" "$OUT/logs/$file.server.log" || { FAILED+=("$file"); stop_server; return 0; }
  local args
  # shellcheck disable=SC2207
  args=(fanout --json --target waypost --url "$URL" --server-pid "$SERVER_PID" --label "$entry"
    --encoding "$enc" $(scenario_args "$scen"))
  echo "+ waypost-bench ${args[*]}"
  record_load "$file" start
  if timeout "$RUN_TIMEOUT" "$BENCH" "${args[@]}" >"$OUT/$file.json.tmp" 2>>"$OUT/logs/bench.log"; then
    record_load "$file" end
    mv "$OUT/$file.json.tmp" "$OUT/$file.json"
    { echo "${SERVER_CMD[*]}"; echo "waypost-bench ${args[*]}"; } >"$OUT/$file.cmd"
  else
    echo "  failed (see $OUT/logs/bench.log)" >&2
    rm -f "$OUT/$file.json.tmp"
    FAILED+=("$file")
  fi
  stop_server
}

ENTRIES=()
[ -n "$FLOOR" ] && ENTRIES+=(floor)
for e in "${ENCS[@]}"; do ENTRIES+=("waypost-$e"); done
for round in $(seq 1 "$ROUNDS"); do
  order=("${ENTRIES[@]}")
  if [ $((round % 2)) = 0 ]; then
    order=()
    for ((i = ${#ENTRIES[@]} - 1; i >= 0; i--)); do order+=("${ENTRIES[$i]}"); done
  fi
  for scen in "${SCENS[@]}"; do
    scenario_args "$scen" >/dev/null
    for entry in "${order[@]}"; do
      log "round $round/$ROUNDS: $scen, $entry"
      run_one "$round" "$scen" "$entry"
    done
  done
done

{
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "nproc=$(nproc)"
  echo "cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
  echo "mem=$(free -g | awk '/^Mem:/{print $2" GiB"}')"
  echo "kernel=$(uname -r)"
  echo "waypost=$("$WAYPOST" --version 2>/dev/null) ($(git rev-parse --short HEAD 2>/dev/null))"
  echo "rustc=$(rustc --version)"
  echo "autogroup_nice=$(cat /proc/self/autogroup 2>/dev/null | sed -n 's/.*nice //p')"
} >"$OUT/env.txt"
python3 bench/encodings_table.py "$OUT" | tee "$OUT/table.md"
log "reports in $OUT"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "failed runs: ${FAILED[*]}" >&2
  exit 1
fi
