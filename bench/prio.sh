#!/usr/bin/env bash
# Runs a benchmark command at high CPU priority on a shared host:
#
#   bench/prio.sh bench/compare.sh --only waypost-memory,floor --scenarios heavy
#
# `nice -n -15` alone does not do it where the kernel groups scheduling by
# session (/proc/sys/kernel/sched_autogroup_enabled = 1, the default of most
# distributions): CPU is shared between sessions first and `nice` only ranks
# processes within their own session, so a niced benchmark still gets one
# session's share against every other session's build. This script starts the
# command in a session of its own (setsid), gives that session's autogroup
# nice $BENCH_NICE (default -15; needs root or CAP_SYS_NICE) and runs the
# command under the same nice. A Redis started by `start_redis` daemonizes
# into a session of its own at nice 0, so the Redis for $BENCH_REDIS_PORT
# (default 6399) is started here, in the foreground of the prioritized
# session, unless one already answers there.
set -euo pipefail
NICE="${BENCH_NICE:--15}"
if [ "${1:-}" != --in-session ]; then
  exec setsid --wait "$0" --in-session "$@"
fi
shift
if [ "$(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null || echo 0)" = 1 ]; then
  echo "$NICE" >/proc/self/autogroup
fi
REDIS_PORT="${BENCH_REDIS_PORT:-6399}"
RPID=""
if command -v redis-server >/dev/null && ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  dir="$(mktemp -d)"
  nice -n "$NICE" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    >"$dir/redis.log" 2>&1 &
  RPID=$!
  for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
rc=0
nice -n "$NICE" "$@" || rc=$?
if [ -n "$RPID" ]; then kill -TERM "$RPID" 2>/dev/null || true; wait "$RPID" 2>/dev/null || true; fi
exit "$rc"
