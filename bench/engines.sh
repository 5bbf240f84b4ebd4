#!/usr/bin/env bash
# Issue 21's engine table: ingest fixes/s and fan-out deliveries/s at
# p99 < 50 ms on one Redis, one Redis with a replica and WAIT on/off, a
# 3-primary Redis Cluster, and NATS as the bus with the stores on Redis;
# Redis CPU per 1,000 fixes and per 1,000 deliveries (redis-server CPU read
# from /proc over the measured window by waypost-bench --server-pid), and on
# the cluster how evenly the primaries share the load (INFO commandstats
# calls and CPU, busiest / idlest).
#
#   bench/engines.sh [OUT_DIR]      (release binaries in $CARGO_TARGET_DIR/release)
#
# One waypost process per engine, all services on loopback, ports 7800-7899.
# Every loop is bounded (a few fixed steps per engine). Benchmark processes
# run at nice -15 when root. Writes one JSON report per run to OUT_DIR and
# prints a summary table (bench/engines_table.py).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
OUT="${1:-$ROOT/.work/bench-engines/$(date -u +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
WORK="$OUT/data"
mkdir -p "$WORK"
NICE=()
[ "$(id -u)" = 0 ] && NICE=(nice -n -15)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

redis() { # PORT [ARGS...] -> starts redis-server, echoes its pid
  local port="$1"; shift
  mkdir -p "$WORK/r$port"
  "${NICE[@]}" redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$WORK/r$port" --logfile "$WORK/r$port/log" "$@" >/dev/null 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  echo "$pid"
}

waypost() { # PORT ARGS... -> starts waypost serve, echoes its pid
  local port="$1"; shift
  WAYPOST_LOG_FORMAT=text RUST_LOG=warn "${NICE[@]}" "$BIN/waypost" serve --dev \
    --ingest-requests-per-s 1000000 --max-connections-per-user 100000 \
    --listen "127.0.0.1:$port" "$@" >"$OUT/waypost-$port.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && { echo "$pid"; return 0; }
    sleep 0.1
  done
  echo "waypost on $port did not get ready; see $OUT/waypost-$port.log" >&2
  return 1
}

commandstats() { # PORT... -> "port calls" lines (all commands)
  for p in "$@"; do
    echo "$p $(redis-cli -p "$p" info commandstats | sed -n 's/.*calls=\([0-9]*\).*/\1/p' | paste -sd+ | bc)"
  done
}

bench() { # LABEL KIND URL PIDS ARGS...
  local label="$1" kind="$2" url="$3" pids="$4"; shift 4
  "${NICE[@]}" "$BIN/waypost-bench" "$kind" --target waypost --url "$url" --server-pid "$pids" \
    --label "$label" --json "$@" >"$OUT/$label-$kind-$(date +%s%N).json"
}

# Steps: ingest batch 10 with 4/8/16 requests in flight; fan-out of 2,000
# watchers over 100 drivers (20 per driver) at 100/250/500 posts/s.
run_engine() { # LABEL URL PIDS REDIS_PORTS
  local label="$1" url="$2" pids="$3" ports="$4"
  for c in 4 8 16; do
    commandstats $ports >"$OUT/$label-ingest-c$c.before"
    bench "$label" ingest "$url" "$pids" --drivers 50 --batch 10 --concurrency "$c" --duration 8 --warmup 1
    commandstats $ports >"$OUT/$label-ingest-c$c.after"
  done
  for r in 100 250 500; do
    commandstats $ports >"$OUT/$label-fanout-r$r.before"
    bench "$label" fanout "$url" "$pids" --subscribers 2000 --drivers 100 --rate "$r" \
      --duration 8 --warmup 2 --drain 3
    commandstats $ports >"$OUT/$label-fanout-r$r.after"
  done
}

echo "machine: $(nproc) cores, $(uname -r); load before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/machine.txt"

# 1. One Redis.
R=$(redis 7801)
W=$(waypost 7811 --engine redis --redis-url redis://127.0.0.1:7801)
run_engine redis http://127.0.0.1:7811 "$W,$R" 7801
kill "$W" "$R"; sleep 1

# 2. A primary and a replica, WAIT off and on.
P=$(redis 7821); Q=$(redis 7822 --replicaof 127.0.0.1 7821)
sleep 1
W=$(waypost 7831 --engine redis --redis-url redis://127.0.0.1:7821)
run_engine redis-replica-wait-off http://127.0.0.1:7831 "$W,$P,$Q" 7821
kill "$W"; sleep 1
W=$(waypost 7832 --engine redis --redis-url redis://127.0.0.1:7821 --redis-wait-replicas 1)
run_engine redis-replica-wait-on http://127.0.0.1:7832 "$W,$P,$Q" 7821
kill "$W" "$P" "$Q"; sleep 1

# 3. Redis Cluster: 3 primaries (no replicas: the primaries' share is what
# is measured).
C=()
for p in 7841 7842 7843; do
  C+=("$(redis "$p" --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000)")
done
redis-cli --cluster create 127.0.0.1:7841 127.0.0.1:7842 127.0.0.1:7843 --cluster-yes >/dev/null
for _ in $(seq 1 100); do
  redis-cli -p 7841 cluster info | grep -q cluster_state:ok && break; sleep 0.1
done
sleep 1
W=$(waypost 7851 --engine redis-cluster \
  --redis-url redis://127.0.0.1:7841,redis://127.0.0.1:7842,redis://127.0.0.1:7843)
run_engine redis-cluster http://127.0.0.1:7851 "$W,${C[0]},${C[1]},${C[2]}" "7841 7842 7843"
kill "$W"; sleep 1

# 4. NATS bus, stores on one Redis.
R=$(redis 7861)
"${NICE[@]}" nats-server -a 127.0.0.1 -p 7862 >/dev/null 2>&1 &
N=$!; PIDS+=("$N"); sleep 0.5
W=$(waypost 7871 --engine redis --redis-url redis://127.0.0.1:7861 --bus nats --nats-url nats://127.0.0.1:7862)
run_engine nats-redis http://127.0.0.1:7871 "$W,$R,$N" 7861
kill "$W" "$R" "$N"; sleep 1
kill "${C[@]}" 2>/dev/null || true

echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"
python3 "$ROOT/bench/engines_table.py" "$OUT"
