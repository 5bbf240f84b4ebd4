#!/usr/bin/env bash
# Bindings: builds the waypost-ffi cdylib (debug) and the packages, starts a
# real server (`waypost serve --dev` on a free loopback port) and tests the
# packages against it, the way apps consume them:
#   - JVM: the Maven reactor bindings/kotlin (`mvn verify`) packs the generated
#     Kotlin and the library into io.waypost:waypost-jvm (JNA resource
#     linux-x86-64/), builds waypost-ktx, and runs the JUnit 5 tests of
#     waypost-tests against those JARs;
#   - Python: maturin builds the wheel (bindings/ffi/pyproject.toml), which is
#     installed into a fresh virtualenv; pytest runs there, against the
#     installed package, never the source tree;
#   - Swift: the sources are generated (bindings/swift/Generated) and compiled
#     when a Swift compiler exists (none on Linux CI machines).
# The Android AAR (bindings/android) and the XCFramework
# (bindings/swift/build-xcframework.sh) need the Android SDK / Xcode: not here.
#
#   scripts/test.d/40-bindings.sh            everything
#   SKIP_KOTLIN=1 / SKIP_PYTHON=1            leave one language out
#   WAYPOST_BINDINGS_ONLY=1                  build only the packages needed
#
# Maven uses ~/.m2 unless WAYPOST_M2_REPO is set; pip downloads maturin and
# pytest from PyPI into the virtualenv ($WAYPOST_WORK/py-venv).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
cd "$WAYPOST_ROOT"

TARGET="${CARGO_TARGET_DIR:-$WAYPOST_ROOT/target}"
WAYPOST_BIN="$TARGET/debug/waypost"

t0=$SECONDS
log "bindings: cargo build (waypost-ffi cdylib, uniffi-bindgen, waypost)"
# Same package selection and features as scripts/test's `cargo build
# --workspace --bins`, so nothing it built is rebuilt: only the cdylib is new.
# WAYPOST_BINDINGS_ONLY=1 builds just the three packages needed (handy while
# other crates of the workspace are mid-edit). generate.sh reads the library's
# and uniffi-bindgen's paths from cargo's messages (.so here, .dylib on a Mac).
if [ -n "${WAYPOST_BINDINGS_ONLY:-}" ]; then
  cargo_args="--locked -p waypost-ffi -p uniffi-bindgen -p waypost-server"
else
  cargo_args="--locked --workspace --bins --lib"
fi
WAYPOST_FFI_LIB="$(bindings/generate.sh --cargo-args "$cargo_args" lib)"
WAYPOST_BINDGEN="$(bindings/generate.sh --cargo-args "$cargo_args" bindgen)"
# Maven's waypost-jvm (through generate.sh) uses these instead of building again.
export WAYPOST_FFI_LIB WAYPOST_BINDGEN
echo "build: $((SECONDS - t0)) s ($WAYPOST_FFI_LIB)"

t0=$SECONDS
log "bindings: generate Swift"
SWIFT_OUT=bindings/swift/Generated
rm -rf "$SWIFT_OUT" bindings/python/waypost   # the latter: left by older versions of this script
bindings/generate.sh swift "$SWIFT_OUT"
# One .swift + .h + .modulemap per uniffi component in the library (waypost-ffi's and waypost-sdk's).
ls "$SWIFT_OUT/Waypost.swift" "$SWIFT_OUT/WaypostFFI.h" "$SWIFT_OUT/WaypostFFI.modulemap" \
  "$SWIFT_OUT/WaypostSdk.swift" "$SWIFT_OUT/WaypostSdkFFI.h" "$SWIFT_OUT/WaypostSdkFFI.modulemap" >/dev/null
echo "generate: $((SECONDS - t0)) s"

# A real server on a free loopback port; its first stdout line names it.
SERVER_LOG="$WAYPOST_WORK/bindings-server.log"
"$WAYPOST_BIN" serve --dev --listen 127.0.0.1:0 >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!
trap 'kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true' EXIT
WAYPOST_URL=""
for _ in $(seq 1 100); do
  addr="$(sed -n 's/^listening on \(.*\)$/\1/p' "$SERVER_LOG" | head -n1)"
  if [ -n "$addr" ]; then WAYPOST_URL="http://$addr"; break; fi
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$WAYPOST_URL" ]; then
  echo "the server did not start; see $SERVER_LOG" >&2
  cat "$SERVER_LOG" >&2
  exit 1
fi
export WAYPOST_URL WAYPOST_BIN
log "bindings: server at $WAYPOST_URL"

if [ -z "${SKIP_KOTLIN:-}" ]; then
  t0=$SECONDS
  log "bindings: JVM packages + Kotlin tests (mvn verify)"
  apt_install maven openjdk-17-jdk-headless
  REPORTS=bindings/kotlin/waypost-tests/target/surefire-reports
  rm -rf "$REPORTS"
  mvn_args=(-B -ntp -f bindings/kotlin/pom.xml)
  [ -n "${WAYPOST_M2_REPO:-}" ] && mvn_args+=("-Dmaven.repo.local=$WAYPOST_M2_REPO")
  mvn "${mvn_args[@]}" verify 2>&1 | grep -vE '^\[INFO\] (Download|---|$)|^\[INFO\] *$' || {
    echo "Kotlin build/tests failed (reports: $REPORTS)" >&2; exit 1; }
  # grep ends the pipe's status; trust the reports and the JAR instead.
  if grep -lE '<(failure|error)[ >]' "$REPORTS"/TEST-*.xml >/dev/null 2>&1 ||
    ! ls "$REPORTS"/TEST-*.xml >/dev/null 2>&1; then
    echo "Kotlin tests failed (reports: $REPORTS)" >&2; exit 1
  fi
  jar="$(ls bindings/kotlin/waypost-jvm/target/waypost-jvm-*.jar)"
  python3 -m zipfile -l "$jar" | grep "^linux-x86-64/libwaypost_ffi.so " >/dev/null || {
    echo "$jar lacks linux-x86-64/libwaypost_ffi.so" >&2; exit 1; }
  echo "kotlin: $((SECONDS - t0)) s ($jar, $(du -m "$jar" | cut -f1) MB)"
fi

if [ -z "${SKIP_PYTHON:-}" ]; then
  t0=$SECONDS
  log "bindings: Python wheel (maturin) + tests (pytest) in a fresh virtualenv"
  apt_install python3-venv
  VENV="$WAYPOST_WORK/py-venv"
  WHEELS="$WAYPOST_WORK/wheels"
  rm -rf "$VENV" "$WHEELS"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check 'maturin>=1.9,<2' pytest
  # Debug profile: the tests need no optimised build, and it reuses the build above.
  "$VENV/bin/maturin" build --locked -m bindings/ffi/Cargo.toml --out "$WHEELS"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$WHEELS"/waypost-*.whl
  # The tests must see the installed wheel, nothing from the repository.
  (cd "$WAYPOST_WORK" && "$VENV/bin/python" - "$VENV" <<'PY'
import importlib.metadata, os, sys, waypost
where = os.path.realpath(waypost.__file__)
venv = os.path.realpath(sys.argv[1])
assert where.startswith(venv + os.sep), f"waypost imported from {where}, not the virtualenv {venv}"
wheel = importlib.metadata.version("waypost")
assert wheel == waypost.sdk_version(), f"wheel {wheel} carries library {waypost.sdk_version()}"
print(f"waypost {wheel} from {where}")
PY
  )
  (cd bindings/python/tests && env -u PYTHONPATH "$VENV/bin/python" -m pytest -q -p no:cacheprovider .)
  echo "python: $((SECONDS - t0)) s ($(ls "$WHEELS"))"
fi

if command -v swiftc >/dev/null 2>&1; then
  t0=$SECONDS
  log "bindings: compiling the Swift bindings (swiftc found)"
  mkdir -p "$WAYPOST_WORK/swift"
  # The generated sources (every component, one module) plus the package's
  # hand-written ones (its Generated/ copy, made on a Mac, left out).
  swift_sources=("$SWIFT_OUT"/*.swift)
  for f in bindings/swift/Sources/Waypost/*.swift; do
    if [ -f "$f" ]; then swift_sources+=("$f"); fi
  done
  modulemaps=()
  for m in "$SWIFT_OUT"/*.modulemap; do modulemaps+=(-Xcc "-fmodule-map-file=$m"); done
  swiftc -parse-as-library -emit-library -module-name Waypost \
    "${modulemaps[@]}" -I "$SWIFT_OUT" \
    -L "$(dirname "$WAYPOST_FFI_LIB")" -lwaypost_ffi \
    -o "$WAYPOST_WORK/swift/libWaypostSwift.so" "${swift_sources[@]}"
  echo "swift: $((SECONDS - t0)) s"
else
  log "bindings: no swiftc here; Swift sources generated in $SWIFT_OUT but not compiled"
fi
