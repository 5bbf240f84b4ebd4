#!/usr/bin/env bash
# Benchmark harness smoke test: bench/compare.sh --smoke runs every
# waypost-bench subcommand (fanout, connections, ingest, storm) for a few
# seconds with tiny counts against the Waypost memory engine, the lean ws
# peer and the floor (`waypost-bench floor`), plus one fan-out run of the
# peers' Node load generator against Waypost, and fails unless every report
# is complete (all connected, nothing lost, every client back after the
# restart). Keeps the harness from rotting; the numbers are meaningless
# (debug build).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
cd "$WAYPOST_ROOT"
apt_install curl
if command -v node >/dev/null && command -v npm >/dev/null; then
  timeout 170 bench/compare.sh --smoke
else
  echo "node/npm missing: smoke-testing Waypost only" >&2
  timeout 170 bench/compare.sh --smoke --only waypost-memory
fi
