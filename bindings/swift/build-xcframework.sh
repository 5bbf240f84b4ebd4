#!/usr/bin/env bash
# Builds the Swift package's binary part and generated sources, on macOS with
# Xcode 15+ and Rust:
#
#   rustup target add aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios
#   bindings/swift/build-xcframework.sh            # release; --profile dev for debug
#
# 1. `cargo rustc --crate-type staticlib` of waypost-ffi for the device
#    (aarch64-apple-ios) and both simulators (aarch64-apple-ios-sim,
#    x86_64-apple-ios);
# 2. `lipo` joins the two simulator libraries into one fat library;
# 3. bindings/generate.sh writes the Swift bindings from the host (.dylib)
#    build: the .swift files into Sources/Waypost/Generated/, the C headers and
#    module maps into the framework headers;
# 4. `xcodebuild -create-xcframework` makes WaypostFFI.xcframework (device +
#    simulator slices), then a zip and its SwiftPM checksum for a remote
#    `.binaryTarget(url:checksum:)`.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

profile=release
[ "${1:-}" = "--profile" ] && profile="$2"
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
WORK="$TARGET_DIR/waypost-xcframework"
DEVICE=aarch64-apple-ios
SIMULATORS=(aarch64-apple-ios-sim x86_64-apple-ios)
export IPHONEOS_DEPLOYMENT_TARGET="${IPHONEOS_DEPLOYMENT_TARGET:-15.0}"

for target in "$DEVICE" "${SIMULATORS[@]}"; do
  echo "==> cargo rustc --crate-type staticlib --target $target ($profile)"
  cargo rustc --locked -p waypost-ffi --lib --crate-type staticlib --profile "$profile" --target "$target"
done

rm -rf "$WORK" "$HERE/WaypostFFI.xcframework"
mkdir -p "$WORK/simulator" "$WORK/headers" "$WORK/generated"
sim_libs=()
for target in "${SIMULATORS[@]}"; do sim_libs+=("$TARGET_DIR/$target/$dir/libwaypost_ffi.a"); done
lipo -create "${sim_libs[@]}" -output "$WORK/simulator/libwaypost_ffi.a"

echo "==> Swift bindings (from the host library)"
bash "$ROOT/bindings/generate.sh" swift "$WORK/generated"
# The library holds one uniffi component per crate (waypost-ffi and, when its
# records live there, waypost-sdk): every generated .swift file goes into the
# Swift target (one module, Waypost), every C header into the framework, and
# the module maps are joined into the framework's one module.modulemap.
rm -rf "$HERE/Sources/Waypost/Generated"
mkdir -p "$HERE/Sources/Waypost/Generated"
cp "$WORK"/generated/*.swift "$HERE/Sources/Waypost/Generated/"
cp "$WORK"/generated/*.h "$WORK/headers/"
cat "$WORK"/generated/*.modulemap >"$WORK/headers/module.modulemap"

echo "==> xcodebuild -create-xcframework"
xcodebuild -create-xcframework \
  -library "$TARGET_DIR/$DEVICE/$dir/libwaypost_ffi.a" -headers "$WORK/headers" \
  -library "$WORK/simulator/libwaypost_ffi.a" -headers "$WORK/headers" \
  -output "$HERE/WaypostFFI.xcframework"

(cd "$HERE" && rm -f WaypostFFI.xcframework.zip && zip -qry WaypostFFI.xcframework.zip WaypostFFI.xcframework)
checksum="$(cd "$HERE" && swift package compute-checksum WaypostFFI.xcframework.zip)"
echo "built $HERE/WaypostFFI.xcframework and $HERE/Sources/Waypost/Generated/"
echo "remote package: .binaryTarget(name: \"WaypostFFI\", url: \"<where you upload WaypostFFI.xcframework.zip>\", checksum: \"$checksum\")"
