# Shared helpers for scripts/*: installing Debian packages and starting the
# services the tests need. Source it; do not run it.

WAYPOST_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WAYPOST_WORK="${WAYPOST_WORK:-$WAYPOST_ROOT/.work}"
mkdir -p "$WAYPOST_WORK"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; return 1; fi
}

APT_UPDATED=""
# apt_install PKG... : installs the Debian packages that are missing.
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]} (apt)"
  if [ -z "$APT_UPDATED" ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# start_redis PORT : starts a throwaway redis-server on 127.0.0.1:PORT unless
# one already answers there. Prints its URL.
start_redis() {
  local port="$1"
  apt_install redis-server redis-tools
  if redis-cli -p "$port" ping >/dev/null 2>&1; then
    echo "redis://127.0.0.1:$port"; return 0
  fi
  local dir="$WAYPOST_WORK/redis-$port"
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --daemonize yes --save '' --appendonly no \
    --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null
  for _ in $(seq 1 50); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && { echo "redis://127.0.0.1:$port"; return 0; }
    sleep 0.1
  done
  echo "redis on port $port did not start; see $dir/redis.log" >&2
  return 1
}

# start_redis_cluster BASE : a throwaway Redis Cluster of 6 nodes on
# 127.0.0.1:BASE+1..BASE+6 (3 primaries, 3 replicas, `redis-cli --cluster
# create`) unless one already answers there. Prints the seed URLs
# (comma-separated) for --redis-url / WAYPOST_TEST_REDIS_CLUSTER_URL.
start_redis_cluster() {
  local base="$1" ports=() urls=() p i
  apt_install redis-server redis-tools
  for i in 1 2 3 4 5 6; do ports+=("$((base + i))"); urls+=("redis://127.0.0.1:$((base + i))"); done
  local IFS=,
  if redis-cli -p "${ports[0]}" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; then
    echo "${urls[*]}"; return 0
  fi
  unset IFS
  for p in "${ports[@]}"; do
    local dir="$WAYPOST_WORK/redis-cluster-$p"
    rm -rf "$dir"; mkdir -p "$dir"
    redis-server --port "$p" --bind 127.0.0.1 --daemonize yes --save '' --appendonly no \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 1000 \
      --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null
  done
  for p in "${ports[@]}"; do
    for _ in $(seq 1 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  local addrs=()
  for p in "${ports[@]}"; do addrs+=("127.0.0.1:$p"); done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >/dev/null || {
    echo "redis-cli --cluster create failed on ports ${ports[*]}" >&2; return 1; }
  for _ in $(seq 1 100); do
    local ok=1
    for p in "${ports[@]}"; do
      redis-cli -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || ok=0
    done
    if [ "$ok" = 1 ]; then local IFS=,; echo "${urls[*]}"; return 0; fi
    sleep 0.1
  done
  echo "redis cluster on ports ${ports[*]} did not reach cluster_state:ok" >&2
  return 1
}
