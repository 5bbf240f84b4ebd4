//! `uniffi-bindgen`: the uniffi code generator, built from this workspace so
//! its version always matches the `uniffi` crate `waypost-ffi` was built
//! with. Usage (`bindings/generate.sh` finds the host's library and runs it):
//!
//! ```text
//! uniffi-bindgen generate <libwaypost_ffi.so|.dylib> --language kotlin --out-dir … --no-format
//! ```

fn main() {
    uniffi::uniffi_bindgen_main()
}
