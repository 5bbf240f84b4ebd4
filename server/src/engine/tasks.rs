//! Background tasks of the buses and stores: taking their requests in
//! batches, stopping them.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// `first` and whatever else is queued in `requests` right now, at most
/// `max` in all (a manager task handles a burst of requests in one go).
pub(crate) fn drain_batch<T>(first: T, requests: &mut mpsc::Receiver<T>, max: usize) -> Vec<T> {
    let mut batch = vec![first];
    while batch.len() < max {
        match requests.try_recv() {
            Ok(r) => batch.push(r),
            Err(_) => break,
        }
    }
    batch
}

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
