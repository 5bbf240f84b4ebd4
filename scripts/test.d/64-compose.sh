#!/usr/bin/env bash
# deploy/compose.yaml for real with podman-compose: Redis + two Waypost
# replicas + nginx (deploy/nginx.conf), then a WebSocket and an SSE watcher
# through the published nginx port get every posted location within 1 s,
# both replicas took part, and both pass the image HEALTHCHECK command.
#
# The redis and nginx images cannot be pulled here, so local stand-ins are
# built from the Debian base under their official names
# (tests/deploy/standins/); the Waypost image is the one 60-container.sh
# builds (rebuilt if missing).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
source "$WAYPOST_ROOT/scripts/container-env.sh"
cd "$WAYPOST_ROOT"

container_env
apt_install podman-compose golang-github-containernetworking-plugin-dnsname
PY="$(deploy_venv)"
container_base
if ! podman image exists localhost/waypost:test; then
  cargo build --locked -p waypost-server --bin waypost
  container_build_image localhost/waypost:test "${CARGO_TARGET_DIR:-$WAYPOST_ROOT/target}/debug/waypost" >/dev/null
fi
podman tag localhost/waypost:test localhost/waypost:latest
for svc in redis:7-bookworm nginx:1.27-bookworm; do
  name="${svc%%:*}"
  podman image exists "docker.io/library/$svc" || podman build --pull=never -q \
    -t "docker.io/library/$svc" -f "tests/deploy/standins/$name.Containerfile" tests/deploy/standins >/dev/null
done

PROJECT="wptest$$"
export WAYPOST_JWT_SECRET="compose-test-secret-$$"
export WAYPOST_HTTP_PORT="$(free_port)"
COMPOSE=(podman-compose -p "$PROJECT" -f deploy/compose.yaml)
cleanup() {
  "${COMPOSE[@]}" down >/dev/null 2>&1 || true
  podman network rm -f "${PROJECT}_default" >/dev/null 2>&1 || true
}
trap cleanup EXIT

"${COMPOSE[@]}" up -d --no-build >"$CONTAINER_WORK/compose-up.log" 2>&1 || {
  grep -v systemd "$CONTAINER_WORK/compose-up.log" >&2; exit 1; }
BASE="http://127.0.0.1:$WAYPOST_HTTP_PORT"
# podman-compose 1.0 does not wait for depends_on health: wait here.
for _ in $(seq 1 100); do
  curl -fs "$BASE/readyz" 2>/dev/null | grep -q '"engine":"redis"' && break
  sleep 0.2
done
curl -fsS "$BASE/readyz" | grep -q '"engine":"redis"'

"$PY" tests/deploy/client.py track --base "$BASE" --secret "$WAYPOST_JWT_SECRET" --sse --rounds 10 --max-latency 1.0

for r in 1 2; do
  c="${PROJECT}_waypost-${r}_1"
  podman exec "$c" waypost healthcheck || { echo "$c: HEALTHCHECK command failed" >&2; exit 1; }
  served="$(podman exec "$c" bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080
    printf "GET /metrics HTTP/1.0\r\n\r\n" >&3; cat <&3' \
    | awk '/^waypost_(deliveries|ingest_requests)_total/ {s += $NF} END {print s + 0}')"
  [ "$served" -gt 0 ] || { echo "replica $r served nothing" >&2; exit 1; }
  log "replica waypost-$r: healthy, served $served deliveries + ingest requests"
done
log "compose: redis + 2 replicas + nginx: ok"
