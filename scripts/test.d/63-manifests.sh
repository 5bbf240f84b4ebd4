#!/usr/bin/env bash
# Deployment files: the Kubernetes manifests validated against the API
# schemas of two Kubernetes versions with kubernetes-validate (schemas bundled
# in the PyPI package, so this runs offline), strict (unknown fields fail);
# then cross-file consistency (tests/deploy/check_manifests.py): selectors,
# probe paths, grace period vs. drain, uid, env names the binary reads,
# nginx upstreams vs. compose services.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
source "$WAYPOST_ROOT/scripts/container-env.sh"
cd "$WAYPOST_ROOT"

PY="$(deploy_venv)"
VALIDATE="$(dirname "$PY")/kubernetes-validate"
for v in 1.29.0 1.33.0; do
  "$VALIDATE" --strict --quiet -k "$v" deploy/k8s/*.yaml
  log "deploy/k8s/*.yaml valid against Kubernetes $v schemas (strict)"
done
cargo build --locked -p waypost-server --bin waypost
"$PY" tests/deploy/check_manifests.py --root "$WAYPOST_ROOT" \
  --bin "${CARGO_TARGET_DIR:-$WAYPOST_ROOT/target}/debug/waypost"
