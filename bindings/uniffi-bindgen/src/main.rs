//! `uniffi-bindgen`: the uniffi code generator, built from this workspace so
//! its version always matches the `uniffi` crate `waypost-ffi` was built
//! with. Usage (see `scripts/test.d/40-bindings.sh`):
//!
//! ```text
//! uniffi-bindgen generate target/debug/libwaypost_ffi.so --language kotlin --out-dir … --no-format
//! ```

fn main() {
    uniffi::uniffi_bindgen_main()
}
