//! Small helpers for apps and tests to see where they are.

/// The SDK's version (the crate version of the bindings).
#[uniffi::export]
pub fn sdk_version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}

/// The name the native side gives the current thread, if any: callbacks
/// from the SDK's background work run on threads named
/// `waypost-rt`; a thread the app created and attached has no native name
/// (`None`) or its own.
#[uniffi::export]
pub fn native_thread_name() -> Option<String> {
    std::thread::current().name().map(str::to_owned)
}
