#!/usr/bin/env bash
# Builds the server image with podman (runc, local Debian base made with
# debootstrap: this machine has no Docker engine and pulls no image), runs it
# with a published port and checks, through that port: /healthz and /readyz,
# the image's HEALTHCHECK, a non-root user, JSON logs, a driver post reaching
# a WebSocket watcher, and a SIGTERM drain (watchers told 4100, exit 0)
# within the grace period.
#
# The binary is built on the host and copied in (--target prebuilt): compiling
# inside the builder stage would need the rust image (no pulls here) or the
# host toolchain mounted in, and a second full compile. Set
# WAYPOST_CONTAINER_PROFILE=release to ship a release build (default: the
# debug build scripts/test already made). WAYPOST_CONTAINER_BUILD=source
# builds the Dockerfile's default target instead (a full release compile in
# the builder stage; slow, so not the default).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
source "$WAYPOST_ROOT/scripts/container-env.sh"
cd "$WAYPOST_ROOT"

PROFILE="${WAYPOST_CONTAINER_PROFILE:-debug}"
IMAGE=localhost/waypost:test
NAME="waypost-test-$$"
SECRET="container-test-secret-$$"
GRACE_S=15          # podman stop -t; the server drains within WAYPOST_DRAIN_TIMEOUT=10s

container_env
PY="$(deploy_venv)"

t0=$SECONDS
container_base
log "base image ready ($((SECONDS - t0)) s)"
t0=$SECONDS
if [ "${WAYPOST_CONTAINER_BUILD:-prebuilt}" = source ]; then
  # The Dockerfile's default target: compiled in the builder stage.
  container_build_from_source "$IMAGE"
else
  if [ "$PROFILE" = release ]; then
    cargo build --locked --release -p waypost-server --bin waypost
  else
    cargo build --locked -p waypost-server --bin waypost
  fi
  BIN="${CARGO_TARGET_DIR:-$WAYPOST_ROOT/target}/$PROFILE/waypost"
  container_build_image "$IMAGE" "$BIN" >/dev/null
fi
log "image built ($((SECONDS - t0)) s)"

cleanup() {
  podman rm -f "$NAME" >/dev/null 2>&1 || true
  [ -n "${WATCHER_PID:-}" ] && kill "$WATCHER_PID" 2>/dev/null || true
}
trap cleanup EXIT

PORT="$(free_port)"
BASE="http://127.0.0.1:$PORT"
# podman prints systemd-timer errors for HEALTHCHECK on machines without
# systemd; the check is run explicitly below instead.
podman run -d --name "$NAME" --init -p "127.0.0.1:$PORT:8080" \
  -e WAYPOST_JWT_SECRET="$SECRET" "$IMAGE" >/dev/null 2>"$CONTAINER_WORK/run.err" || {
  cat "$CONTAINER_WORK/run.err" >&2; exit 1; }

curl -fs --retry 50 --retry-delay 0 --retry-connrefused --retry-max-time 20 "$BASE/healthz" >/dev/null
curl -fsS "$BASE/readyz" | grep -q '"engine":"memory"'
podman healthcheck run "$NAME" >/dev/null 2>&1 || { echo "HEALTHCHECK failed" >&2; exit 1; }
[ "$(podman exec "$NAME" id -u)" = 10001 ] || { echo "not running as uid 10001" >&2; exit 1; }
# Every log line but the machine-readable "listening on" is a JSON object.
podman logs "$NAME" 2>&1 | grep -v '^listening on ' | "$PY" -c '
import json, sys
lines = [l for l in sys.stdin if l.strip()]
assert lines, "no log lines"
for l in lines:
    rec = json.loads(l)
    assert {"timestamp", "level", "fields"} <= rec.keys(), rec
print(f"{len(lines)} JSON log lines")'
log "health, readiness, HEALTHCHECK, uid, JSON logs: ok"

"$PY" tests/deploy/client.py track --base "$BASE" --secret "$SECRET" --rounds 5 --max-latency 1.0
# The traffic above shows in /metrics: 5 fixes in, 5 tracking frames written
# to the watcher's socket, 5 latency samples, and the WebSocket gone again.
METRICS="$(curl -fsS "$BASE/metrics")"
for want in '^waypost_fixes_ingested_total 5$' \
            '^waypost_deliveries_total{kind="tracking"} 5$' \
            '^waypost_delivery_latency_seconds_count 5$' \
            '^waypost_ingest_requests_total{status="200"} 5$' \
            '^waypost_connections{kind="ws"} 0$' \
            '^waypost_subscriptions 0$'; do
  grep -q "$want" <<<"$METRICS" || { echo "/metrics lacks $want:" >&2; grep '^waypost_' <<<"$METRICS" >&2; exit 1; }
done
log "driver post -> WebSocket watcher through the published port: ok"

# SIGTERM drain: a connected watcher must be told 4100 and the process must
# exit 0 well within the grace period.
"$PY" tests/deploy/client.py drain --base "$BASE" --secret "$SECRET" --timeout 60 \
  >"$CONTAINER_WORK/drain.out" &
WATCHER_PID=$!
for _ in $(seq 1 100); do grep -q ready "$CONTAINER_WORK/drain.out" 2>/dev/null && break; sleep 0.1; done
grep -q ready "$CONTAINER_WORK/drain.out" || { echo "drain watcher did not subscribe" >&2; exit 1; }
start=$(date +%s%N)
podman stop -t "$GRACE_S" "$NAME" >/dev/null 2>&1
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
wait "$WATCHER_PID" || { echo "watcher did not get close code 4100:" >&2; cat "$CONTAINER_WORK/drain.out" >&2; exit 1; }
WATCHER_PID=""
code="$(podman inspect "$NAME" --format '{{.State.ExitCode}}')"
[ "$code" = 0 ] || { echo "exit code $code after SIGTERM" >&2; podman logs "$NAME" | tail >&2; exit 1; }
[ "$elapsed_ms" -lt $((GRACE_S * 1000 - 2000)) ] || { echo "drain took ${elapsed_ms} ms" >&2; exit 1; }
podman logs "$NAME" 2>&1 | grep -q '"server stopped"' || { echo "no 'server stopped' log" >&2; exit 1; }
log "SIGTERM drain: watcher closed with 4100, exit 0 after ${elapsed_ms} ms (grace ${GRACE_S} s)"
