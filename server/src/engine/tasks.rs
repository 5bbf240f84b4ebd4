//! Stopping background tasks of the buses and stores.

use std::time::Duration;

use tokio::task::JoinHandle;

/// Waits for cancelled `tasks` to end, each within `limit` (then aborted).
pub(crate) async fn stop_tasks(tasks: Vec<JoinHandle<()>>, limit: Duration, what: &str) {
    for task in tasks {
        let abort = task.abort_handle();
        if tokio::time::timeout(limit, task).await.is_err() {
            tracing::warn!(what, "background task did not stop in time; aborted");
            abort.abort();
        }
    }
}
