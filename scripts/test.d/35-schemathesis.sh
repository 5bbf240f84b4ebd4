#!/usr/bin/env bash
# Contract fidelity: Schemathesis (from PyPI, pinned in
# tests/contract/requirements.txt) generates valid and invalid requests from
# the server's own GET /openapi.json and checks every answer against the
# document (status codes, content types, response schemas, invalid input
# refused, valid input accepted, auth enforced). Zero failures required.
#
# Runs against a fresh memory-engine server on a free port, as role service
# (so authorization does not hide the handlers). Not fuzzed here, because a
# generated request cannot end them: the WebSocket upgrade (GET /v1/ws) and
# the SSE streams and long polls (they stay open up to their timeout);
# tests/ covers those end to end.
#
#   SCHEMATHESIS_SEED=N        another seed (default 1, reproducible)
#   SCHEMATHESIS_EXAMPLES=N    test cases per operation (default 40)
#   SCHEMATHESIS_MAX_TIME=S    time budget of the run (default 110)
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
cd "$WAYPOST_ROOT"

command -v python3 >/dev/null || apt_install python3
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
VENV="$WAYPOST_WORK/schemathesis-venv"
WANT="$(sed -n 's/^schemathesis==//p' tests/contract/requirements.txt)"
if [ "$("$VENV/bin/st" --version 2>/dev/null | awk '{print $NF}')" != "$WANT" ]; then
  log "installing schemathesis $WANT (pip, into $VENV)"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r tests/contract/requirements.txt
fi

BIN="${CARGO_TARGET_DIR:-$WAYPOST_ROOT/target}/debug/waypost"
cargo build -q --locked -p waypost-server --bin waypost

SECRET="schemathesis-$$-$RANDOM"
OUT="$WAYPOST_WORK/schemathesis-server.out"
LOG="$WAYPOST_WORK/schemathesis-server.log"
"$BIN" serve --listen 127.0.0.1:0 --jwt-secret "$SECRET" >"$OUT" 2>"$LOG" &
SERVER_PID=$!
trap 'kill "$SERVER_PID" 2>/dev/null || true' EXIT
ADDR=""
for _ in $(seq 1 100); do
  ADDR="$(sed -n 's/^listening on //p' "$OUT" | head -1)"
  [ -n "$ADDR" ] && break
  sleep 0.1
done
[ -n "$ADDR" ] || { echo "server did not start; see $OUT" >&2; exit 1; }
TOKEN="$("$BIN" token --jwt-secret "$SECRET" --sub contract --role service --ttl 30m)"

REPORT="$WAYPOST_WORK/schemathesis"
rm -rf "$REPORT"
log "schemathesis against http://$ADDR/openapi.json"
# --max-time bounds the whole run (about 2 minutes on a shared 2-core box).
# Run from the work directory: Schemathesis keeps its cache in ./.schemathesis.
CONFIG="$WAYPOST_ROOT/tests/contract/schemathesis.toml"
cd "$WAYPOST_WORK"
timeout 300 "$VENV/bin/st" --config-file "$CONFIG" run \
  "http://$ADDR/openapi.json" \
  --header "Authorization: Bearer $TOKEN" \
  --exclude-path-regex '^/v1/ws$|/stream$|/poll$' \
  --max-examples "${SCHEMATHESIS_EXAMPLES:-40}" \
  --seed "${SCHEMATHESIS_SEED:-1}" \
  --max-time "${SCHEMATHESIS_MAX_TIME:-110}" \
  --request-timeout 10 \
  --no-color \
  --report junit --report-dir "$REPORT"
log "schemathesis: no failures (report $REPORT)"
