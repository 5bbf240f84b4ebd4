#!/usr/bin/env bash
# Builds the Rust SDK for iOS (device and Apple-silicon simulator) as a static
# library, generates the Swift bindings, and packs both into
# Waypost.xcframework. Needs macOS with Xcode and
#   rustup target add aarch64-apple-ios aarch64-apple-ios-sim
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
cd "$ROOT"

cargo build --release -p waypost-ffi --lib --target aarch64-apple-ios
cargo build --release -p waypost-ffi --lib --target aarch64-apple-ios-sim
# Bindings come from a host build of the same crate (metadata only).
cargo build -p waypost-ffi -p uniffi-bindgen
rm -rf "$HERE/Generated" "$HERE/Waypost.xcframework"
target/debug/uniffi-bindgen generate target/debug/libwaypost_ffi.dylib \
  --language swift --out-dir "$HERE/Generated" --no-format

# The C header + module map become the framework's headers ("module WaypostFFI").
HEADERS="$HERE/Generated/headers"
mkdir -p "$HEADERS"
cp "$HERE/Generated/WaypostFFI.h" "$HEADERS/"
cp "$HERE/Generated/WaypostFFI.modulemap" "$HEADERS/module.modulemap"

xcodebuild -create-xcframework \
  -library target/aarch64-apple-ios/release/libwaypost_ffi.a -headers "$HEADERS" \
  -library target/aarch64-apple-ios-sim/release/libwaypost_ffi.a -headers "$HEADERS" \
  -output "$HERE/Waypost.xcframework"
echo "built $HERE/Waypost.xcframework and $HERE/Generated/Waypost.swift"
