//! Prometheus metrics of one server process, exposed on `GET /metrics`.

use std::collections::BTreeMap;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use serde::{Deserialize, Serialize};

/// Every metric the server records. Cheap to clone handles live inside.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Open connections by kind (`ws`, `sse`, `poll`).
    pub connections: IntGaugeVec,
    /// Channel subscriptions held by local client connections (the
    /// process's own control-channel listener is not counted).
    pub subscriptions: IntGauge,
    pub fixes_ingested: IntCounter,
    pub fixes_duplicate: IntCounter,
    /// Accepted fixes not broadcast live because a newer fix of the driver
    /// was already live (`newer_live`) or came in the same batch
    /// (`newer_in_batch`): only the newest position is broadcast.
    pub fixes_superseded: IntCounterVec,
    pub ingest_requests: IntCounterVec,
    /// Frames written to sockets, by kind (`location`, `message`, ...).
    pub deliveries: IntCounterVec,
    /// From the hub receiving a frame to writing it to the socket.
    pub delivery_latency: Histogram,
    pub slow_consumers: IntCounter,
    pub engine_errors: IntCounter,
    pub redis_reconnects: IntCounter,
    /// Newest items dispatched again after the bus resubscribed (the tail
    /// re-dispatch, `crate::tail`).
    pub tail_redispatched: IntCounter,
    /// Limit hits by kind (`ingest`, `ws_rate`, `connections`, ...).
    pub limit_hits: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("waypost".into()), None).unwrap_or_else(|_| Registry::new());
        let m = Self {
            connections: IntGaugeVec::new(
                Opts::new("connections", "Open client connections by kind"),
                &["kind"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            subscriptions: IntGauge::new(
                "subscriptions",
                "Channel subscriptions of local client connections (internal control listeners not counted)",
            )
            .unwrap_or_else(|_| unreachable_metric()),
            fixes_ingested: IntCounter::new("fixes_ingested_total", "Fixes accepted and stored")
                .unwrap_or_else(|_| unreachable_metric()),
            fixes_duplicate: IntCounter::new(
                "fixes_duplicate_total",
                "Fixes dropped as duplicates",
            )
            .unwrap_or_else(|_| unreachable_metric()),
            fixes_superseded: IntCounterVec::new(
                Opts::new(
                    "fixes_superseded_total",
                    "Accepted fixes not broadcast because a newer fix was live or in the same batch, by reason",
                ),
                &["reason"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            ingest_requests: IntCounterVec::new(
                Opts::new("ingest_requests_total", "Ingest requests by status code"),
                &["status"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            deliveries: IntCounterVec::new(
                Opts::new(
                    "deliveries_total",
                    "Frames written to client sockets by kind",
                ),
                &["kind"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            delivery_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "delivery_latency_seconds",
                    "Time from receiving the request that produced a frame (ingest, chat post, \
                     notification post; for presence, its publish) to writing it on the client \
                     socket or stream, by wall clock so it is the same across processes and engines",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5,
                ]),
            )
            .unwrap_or_else(|_| unreachable_metric()),
            slow_consumers: IntCounter::new(
                "slow_consumers_total",
                "Connections closed with 4101 because their queue overflowed",
            )
            .unwrap_or_else(|_| unreachable_metric()),
            engine_errors: IntCounter::new("engine_errors_total", "Failed engine operations")
                .unwrap_or_else(|_| unreachable_metric()),
            redis_reconnects: IntCounter::new("redis_reconnects_total", "Redis pub/sub reconnects")
                .unwrap_or_else(|_| unreachable_metric()),
            tail_redispatched: IntCounter::new(
                "tail_redispatched_total",
                "Newest items of local channels dispatched again after the bus resubscribed",
            )
            .unwrap_or_else(|_| unreachable_metric()),
            limit_hits: IntCounterVec::new(
                Opts::new(
                    "limit_hits_total",
                    "Requests or frames refused by a limit, by kind",
                ),
                &["kind"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            registry,
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.connections.clone()),
            Box::new(m.subscriptions.clone()),
            Box::new(m.fixes_ingested.clone()),
            Box::new(m.fixes_duplicate.clone()),
            Box::new(m.fixes_superseded.clone()),
            Box::new(m.ingest_requests.clone()),
            Box::new(m.deliveries.clone()),
            Box::new(m.delivery_latency.clone()),
            Box::new(m.slow_consumers.clone()),
            Box::new(m.engine_errors.clone()),
            Box::new(m.redis_reconnects.clone()),
            Box::new(m.tail_redispatched.clone()),
            Box::new(m.limit_hits.clone()),
        ];
        for c in collectors {
            if let Err(e) = m.registry.register(c) {
                tracing::error!(error = %e, "metric registration failed");
            }
        }
        m
    }

    /// The registry, for subsystems that bring their own metrics
    /// (webhooks, the order stream).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Current values summed over labels (connections kept by kind), for
    /// the dashboard.
    /// Records the delivery latency of a frame written to a client, from
    /// its origin (wall clock; a clock step back counts as 0).
    pub fn observe_latency(&self, origin_us: i64) {
        let latency_us = (crate::frame::now_us() - origin_us).max(0);
        self.delivery_latency.observe(latency_us as f64 / 1e6);
    }

    /// Counts `n` frames of channel kind `kind` written to clients.
    pub fn delivered(&self, kind: &str, n: u64) {
        if n > 0 {
            self.deliveries.with_label_values(&[kind]).inc_by(n);
        }
    }

    pub fn totals(&self) -> Totals {
        let mut connections = BTreeMap::new();
        for mf in self.connections.collect() {
            for m in mf.get_metric() {
                let kind = m
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "kind")
                    .map_or("", |l| l.value());
                connections.insert(kind.to_owned(), m.get_gauge().get_value() as i64);
            }
        }
        Totals {
            connections,
            subscriptions: self.subscriptions.get(),
            fixes_ingested: self.fixes_ingested.get(),
            fixes_duplicate: self.fixes_duplicate.get(),
            ingest_requests: sum_counters(&self.ingest_requests),
            deliveries: sum_counters(&self.deliveries),
            delivery_latency_count: self.delivery_latency.get_sample_count(),
            delivery_latency_sum_s: self.delivery_latency.get_sample_sum(),
            slow_consumers: self.slow_consumers.get(),
            engine_errors: self.engine_errors.get(),
            redis_reconnects: self.redis_reconnects.get(),
            limit_hits: sum_counters(&self.limit_hits),
        }
    }

    /// The delivery latency histogram's finite buckets, cumulative.
    pub fn latency_buckets(&self) -> Vec<Bucket> {
        self.delivery_latency
            .collect()
            .iter()
            .flat_map(|mf| mf.get_metric())
            .flat_map(|m| m.get_histogram().get_bucket())
            .filter(|b| b.upper_bound().is_finite())
            .map(|b| Bucket {
                le: b.upper_bound(),
                count: b.cumulative_count(),
            })
            .collect()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// A point-in-time summary of [`Metrics`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Totals {
    /// Open connections by kind.
    pub connections: BTreeMap<String, i64>,
    pub subscriptions: i64,
    pub fixes_ingested: u64,
    pub fixes_duplicate: u64,
    pub ingest_requests: u64,
    pub deliveries: u64,
    pub delivery_latency_count: u64,
    pub delivery_latency_sum_s: f64,
    pub slow_consumers: u64,
    pub engine_errors: u64,
    pub redis_reconnects: u64,
    pub limit_hits: u64,
}

impl Totals {
    /// Adds another process's totals to these (connections by kind).
    pub fn add(&mut self, o: &Totals) {
        for (kind, n) in &o.connections {
            *self.connections.entry(kind.clone()).or_default() += n;
        }
        self.subscriptions += o.subscriptions;
        self.fixes_ingested += o.fixes_ingested;
        self.fixes_duplicate += o.fixes_duplicate;
        self.ingest_requests += o.ingest_requests;
        self.deliveries += o.deliveries;
        self.delivery_latency_count += o.delivery_latency_count;
        self.delivery_latency_sum_s += o.delivery_latency_sum_s;
        self.slow_consumers += o.slow_consumers;
        self.engine_errors += o.engine_errors;
        self.redis_reconnects += o.redis_reconnects;
        self.limit_hits += o.limit_hits;
    }
}

/// One bucket of the delivery latency histogram: how many deliveries took
/// at most `le` seconds (cumulative, as in Prometheus; the `+Inf` bucket is
/// the total count).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub le: f64,
    pub count: u64,
}

/// Adds `more` to `into` bucket by bucket (same bounds on every process of
/// one version; a bound only one side has is kept as is).
pub fn add_buckets(into: &mut Vec<Bucket>, more: &[Bucket]) {
    for b in more {
        match into.iter_mut().find(|a| a.le == b.le) {
            Some(a) => a.count += b.count,
            None => into.push(*b),
        }
    }
    into.sort_by(|a, b| a.le.total_cmp(&b.le));
}

fn sum_counters(vec: &IntCounterVec) -> u64 {
    vec.collect()
        .iter()
        .flat_map(|mf| mf.get_metric())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Metric constructors only fail on invalid names, which are constants here.
fn unreachable_metric<T>() -> T {
    panic!("invalid metric definition (a programming error caught by the unit test)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_all_families() {
        let m = Metrics::new();
        m.fixes_ingested.inc();
        m.connections.with_label_values(&["ws"]).inc();
        m.deliveries.with_label_values(&["location"]).inc();
        m.limit_hits.with_label_values(&["ingest"]).inc();
        m.ingest_requests.with_label_values(&["200"]).inc();
        let text = m.render();
        for name in [
            "waypost_connections",
            "waypost_subscriptions",
            "waypost_fixes_ingested_total 1",
            "waypost_delivery_latency_seconds_bucket",
            "waypost_slow_consumers_total",
            "waypost_engine_errors_total",
            "waypost_redis_reconnects_total",
            "waypost_limit_hits_total",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }

    #[test]
    fn totals_sum_over_labels() {
        let m = Metrics::new();
        m.connections.with_label_values(&["ws"]).add(2);
        m.connections.with_label_values(&["sse"]).inc();
        m.deliveries.with_label_values(&["tracking"]).inc_by(3);
        m.deliveries.with_label_values(&["chat"]).inc_by(4);
        m.limit_hits.with_label_values(&["ingest"]).inc();
        m.delivery_latency.observe(0.5);
        let t = m.totals();
        assert_eq!(t.connections.get("ws"), Some(&2));
        assert_eq!(t.connections.get("sse"), Some(&1));
        assert_eq!(t.deliveries, 7);
        assert_eq!(t.limit_hits, 1);
        assert_eq!(t.delivery_latency_count, 1);
        assert!((t.delivery_latency_sum_s - 0.5).abs() < 1e-9);
        let b = m.latency_buckets();
        assert_eq!(b.iter().find(|b| b.le == 0.25).map(|b| b.count), Some(0));
        assert_eq!(b.iter().find(|b| b.le == 0.5).map(|b| b.count), Some(1));
        let mut sum = t.clone();
        sum.add(&t);
        assert_eq!(sum.connections.get("ws"), Some(&4));
        assert_eq!(sum.deliveries, 14);
        let mut all = b.clone();
        add_buckets(&mut all, &b);
        assert_eq!(all.len(), b.len());
        assert_eq!(all.iter().find(|b| b.le == 2.5).map(|b| b.count), Some(2));
    }
}
