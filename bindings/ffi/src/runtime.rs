//! The tokio runtime the SDK owns: created on first use, shared by every
//! driver and buyer client of the process, never tied to a foreign thread.
//! Apps do not see it; Kotlin coroutines, Swift tasks and Python asyncio
//! await our futures through uniffi's polling, whatever thread they run on.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Runtime;

use crate::error::WaypostError;

/// Name of the runtime's threads (callbacks from background work arrive on
/// these).
pub const THREAD_NAME: &str = "waypost-rt";

/// Built once; a failure is remembered (and reported by every call) rather
/// than retried, so two threads can never race to build two runtimes.
static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The SDK runtime (two worker threads: the SDK is I/O bound and phones
/// have better uses for their cores).
pub(crate) fn get() -> Result<&'static Runtime, WaypostError> {
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name(THREAD_NAME)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| WaypostError::internal(format!("cannot start the SDK runtime: {e}")))
}

/// Runs `fut` on the SDK runtime and waits for it from whatever executor
/// polls the returned future (uniffi's foreign future polling included).
pub(crate) async fn run<F>(fut: F) -> Result<F::Output, WaypostError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    get()?
        .spawn(fut)
        .await
        .map_err(|e| WaypostError::internal(format!("SDK task failed: {e}")))
}

/// Runs blocking work (SQLite) on the SDK runtime's blocking pool and
/// waits for it without blocking the caller's thread: what every exported
/// `async` function that touches disk uses.
pub(crate) async fn run_blocking<T, F>(f: F) -> Result<T, WaypostError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    get()?
        .spawn_blocking(f)
        .await
        .map_err(|e| WaypostError::internal(format!("SDK task failed: {e}")))
}
