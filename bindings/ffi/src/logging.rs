//! SDK logs into the app's logger: Android `Log`, iOS `os_log`, Python
//! `logging`. The SDK logs with `tracing`; [`init_logging`] installs a
//! process-wide subscriber that hands each event to the app's [`LogSink`].

use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::error::WaypostError;

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// Receives the SDK's log lines, on whatever thread logged them. Must be
/// cheap and must not throw.
#[uniffi::export(with_foreign)]
pub trait LogSink: Send + Sync {
    /// `target` is the Rust module (e.g. `waypost_sdk::driver::uploader`);
    /// `message` has the event's fields appended as `key=value`.
    fn log(&self, level: LogLevel, target: String, message: String);
}

/// Sends SDK logs to `sink`, filtered by `filter` (`tracing` env-filter
/// syntax, e.g. `"info"` or `"waypost_sdk=debug,info"`). Only the first
/// call in a process installs a logger: returns `false` when one was
/// already installed.
#[uniffi::export]
pub fn init_logging(filter: String, sink: Arc<dyn LogSink>) -> Result<bool, WaypostError> {
    let filter = EnvFilter::try_new(&filter)
        .map_err(|e| WaypostError::invalid(format!("log filter {filter:?}: {e}")))?;
    Ok(tracing_subscriber::registry()
        .with(SinkLayer(sink).with_filter(filter))
        .try_init()
        .is_ok())
}

struct SinkLayer(Arc<dyn LogSink>);

impl<S: tracing::Subscriber> Layer<S> for SinkLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let level = match *meta.level() {
            tracing::Level::ERROR => LogLevel::Error,
            tracing::Level::WARN => LogLevel::Warn,
            tracing::Level::INFO => LogLevel::Info,
            tracing::Level::DEBUG => LogLevel::Debug,
            tracing::Level::TRACE => LogLevel::Trace,
        };
        let mut line = Line::default();
        event.record(&mut line);
        let message = if line.fields.is_empty() {
            line.message
        } else {
            format!("{}{}", line.message, line.fields)
        };
        let target = meta.target().to_owned();
        // A throwing sink must not take the SDK's thread down with it.
        let _ = catch_unwind(AssertUnwindSafe(|| self.0.log(level, target, message)));
    }
}

#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}
