#!/usr/bin/env bash
# Generates the uniffi bindings of the Waypost SDK from the waypost-ffi
# library built for THIS host (Linux .so, macOS .dylib): bindings are
# generated from the library's metadata, which is the same for every target,
# so the host build serves Android and iOS packages too.
#
#   bindings/generate.sh [options] LANGUAGE OUT_DIR     kotlin | swift | python
#   bindings/generate.sh [options] lib                  print the library's path
#   bindings/generate.sh [options] bindgen              print uniffi-bindgen's path
#
# Options:
#   --profile P      cargo profile of the host build (dev, the default, or release)
#   --config FILE    uniffi global config (e.g. bindings/android/uniffi.toml), merged
#                    over bindings/ffi/uniffi.toml
#   --copy-lib DIR   also copy the library into DIR (e.g. a JNA resource folder)
#   --cargo-args "A" the packages/flags of the cargo build (default
#                    "-p waypost-ffi -p uniffi-bindgen"; scripts/test.d/40-bindings.sh
#                    passes its workspace build so features unify the same way)
#
# Environment: WAYPOST_FFI_LIB and WAYPOST_BINDGEN name an already built
# library and uniffi-bindgen (no cargo build then); CARGO_TARGET_DIR is honoured.
# The library path is taken from cargo's own build messages, never assumed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Paths given by the caller are relative to the caller's directory; uniffi-bindgen runs from ROOT.
abs() { case "$1" in /*) echo "$1";; *) echo "$PWD/$1";; esac; }

profile=dev config="" copy_lib="" cargo_args="-p waypost-ffi -p uniffi-bindgen"
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2;;
    --config) config="$2"; shift 2;;
    --copy-lib) copy_lib="$2"; shift 2;;
    --cargo-args) cargo_args="$2"; shift 2;;
    -h|--help) sed -n '2,23p' "$0"; exit 0;;
    *) break;;
  esac
done
[ $# -ge 1 ] || { sed -n '2,23p' "$0" >&2; exit 2; }
language="$1"

lib="${WAYPOST_FFI_LIB:-}"
bindgen="${WAYPOST_BINDGEN:-}"
if [ -z "$lib" ] || [ -z "$bindgen" ]; then
  # One cargo invocation builds both; its JSON messages name the files.
  # shellcheck disable=SC2086 # cargo_args is a list of words
  messages="$(cd "$ROOT" && cargo build --profile "$profile" $cargo_args \
    --message-format=json-render-diagnostics)"
  if [ -z "$lib" ]; then
    lib="$(printf '%s\n' "$messages" | grep '"reason":"compiler-artifact"' | grep '"name":"waypost_ffi"' |
      grep -o '"filenames":\[[^]]*\]' | tr ',' '\n' | tr -d '"[]' | sed 's/^filenames://' |
      grep -E '\.(so|dylib|dll)$' | tail -n1 || true)"
  fi
  if [ -z "$bindgen" ]; then
    bindgen="$(printf '%s\n' "$messages" | grep '"reason":"compiler-artifact"' | grep '"name":"uniffi-bindgen"' |
      grep -o '"executable":"[^"]*"' | sed 's/^"executable":"\(.*\)"$/\1/' | tail -n1 || true)"
  fi
fi
[ -n "$lib" ] && lib="$(abs "$lib")"
[ -n "$bindgen" ] && bindgen="$(abs "$bindgen")"
[ -f "$lib" ] || { echo "generate.sh: no waypost-ffi library found (got '$lib')" >&2; exit 1; }
[ -x "$bindgen" ] || { echo "generate.sh: no uniffi-bindgen executable found (got '$bindgen')" >&2; exit 1; }

if [ -n "$copy_lib" ]; then
  mkdir -p "$copy_lib"
  cp -f "$lib" "$copy_lib/"
fi

case "$language" in
  lib) echo "$lib"; exit 0;;
  bindgen) echo "$bindgen"; exit 0;;
esac
[ $# -eq 2 ] || { echo "generate.sh: LANGUAGE needs an OUT_DIR" >&2; exit 2; }
out="$2"
case "$language" in kotlin|swift|python) ;; *) echo "generate.sh: unknown language $language" >&2; exit 2;; esac

out="$(abs "$out")"
[ -n "$config" ] && config="$(abs "$config")"
args=(generate "$lib" --language "$language" --out-dir "$out" --no-format)
[ -n "$config" ] && args+=(--config "$config")
mkdir -p "$out"
# Run from the workspace so uniffi finds bindings/ffi/uniffi.toml through cargo metadata.
(cd "$ROOT" && "$bindgen" "${args[@]}" >/dev/null)
