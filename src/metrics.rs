//! Metrics in the Prometheus text format (feature `metrics`), through the
//! Prometheus project's own client, [`prometheus_client`].
//!
//! [`register`] adds a manager's metrics to the application's
//! [`Registry`]; the application serves the registry where it wants
//! (`GET /metrics` on an internal port, or behind its own authentication:
//! the numbers say how busy the server is). Counting starts at
//! registration; values that are states (open connections, the history,
//! the backend) are read at each scrape, so they cost nothing between
//! scrapes.
//!
//! | metric | type | labels | what |
//! | --- | --- | --- | --- |
//! | `htmx_sse_connections` | gauge | `kind`, `state` | open connections (the registry's kinds and states; the manager's own kind in every state, 0 included) |
//! | `htmx_sse_connects_total` | counter | | connections opened |
//! | `htmx_sse_disconnects_total` | counter | `reason` | connections ended: `client_gone`, `lagged` (closed for falling behind), `replaced`, `shutdown`, `stopped`, `timed_out`, `source_ended` |
//! | `htmx_sse_resumes_total` | counter | `result` | connections that asked to resume: `exact`, or the reset they got (`history-gap`, `restarted`, `unrecognized`) |
//! | `htmx_sse_deliveries_total` | counter | | messages written to connections |
//! | `htmx_sse_written_bytes_total` | counter | | bytes of SSE written to connections (before compression and HTTP framing) |
//! | `htmx_sse_published_total` | counter | `type` | messages published by this process, by type (`message` for unnamed ones; names cut at 100 bytes; after the first 64 types, together as `(other)`) |
//! | `htmx_sse_publish_failures_total` | counter | | publishes refused or failed (a backend outage, a bad message) |
//! | `htmx_sse_publish_duration_seconds` | histogram | | time from `send()` to its return |
//! | `htmx_sse_history_messages`, `htmx_sse_history_bytes` | gauge | | what the history holds |
//! | `htmx_sse_backend_up` | gauge | `backend` | 1 when the backend can be reached (always in memory) |
//!
//! ```
//! use axum::{Router, routing::get};
//! use htmx_sse::BroadcastManager;
//! use prometheus_client::registry::Registry;
//! use std::sync::Arc;
//!
//! let manager = BroadcastManager::new();
//! let mut registry = Registry::default();
//! htmx_sse::metrics::register(&mut registry, &manager);
//! let registry = Arc::new(registry);
//!
//! // Serve it on an address only the monitoring can reach.
//! let metrics: Router = Router::new().route(
//!     "/metrics",
//!     get(move || {
//!         let registry = Arc::clone(&registry);
//!         async move { htmx_sse::metrics::text(&registry) }
//!     }),
//! );
//! ```
//!
//! Several managers in one registry each take a label, with
//! [`Registry::sub_registry_with_label`]:
//!
//! ```
//! use htmx_sse::BroadcastManager;
//! use prometheus_client::registry::Registry;
//!
//! let (chat, dashboard) = (BroadcastManager::new(), BroadcastManager::new());
//! let mut registry = Registry::default();
//! htmx_sse::metrics::register(
//!     registry.sub_registry_with_label(("manager".into(), "chat".into())),
//!     &chat,
//! );
//! htmx_sse::metrics::register(
//!     registry.sub_registry_with_label(("manager".into(), "dashboard".into())),
//!     &dashboard,
//! );
//! let mut text = String::new();
//! prometheus_client::encoding::text::encode(&mut text, &registry)?;
//! assert!(text.contains(r#"htmx_sse_connects_total{manager="chat"} 0"#));
//! assert!(text.contains(r#"htmx_sse_connects_total{manager="dashboard"} 0"#));
//! # Ok::<(), std::fmt::Error>(())
//! ```

use std::sync::{Arc, Weak};

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::BroadcastManager;
use crate::broadcast::engine::{Engine, Transport};
use crate::broadcast::meter::LATENCY_BOUNDS;
use crate::connections::ConnectionState;
use crate::streaming::EndReason;

/// Adds `manager`'s metrics to `registry` and starts counting. The
/// registry keeps no strong reference: once the manager is dropped, its
/// metrics are no longer written.
///
/// ```
/// use prometheus_client::registry::Registry;
///
/// let manager = htmx_sse::BroadcastManager::new();
/// let mut registry = Registry::default();
/// htmx_sse::metrics::register(&mut registry, &manager);
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry)?;
/// assert!(text.contains("htmx_sse_backend_up{backend=\"memory\"} 1"));
/// # Ok::<(), std::fmt::Error>(())
/// ```
pub fn register(registry: &mut Registry, manager: &BroadcastManager) {
    manager.inner.fanout.meter.turn_on();
    registry.register_collector(Box::new(ManagerCollector {
        engine: Arc::downgrade(&manager.inner),
    }));
}

/// `registry` in the text format, as an axum response
/// (`Content-Type: application/openmetrics-text; version=1.0.0`); a 500 if
/// it cannot be encoded.
///
/// ```
/// use prometheus_client::registry::Registry;
///
/// let response = htmx_sse::metrics::text(&Registry::default());
/// assert_eq!(response.status(), 200);
/// ```
#[must_use]
pub fn text(registry: &Registry) -> Response {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            out,
        )
            .into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics could not be encoded",
        )
            .into_response(),
    }
}

struct ManagerCollector {
    engine: Weak<Engine>,
}

impl std::fmt::Debug for ManagerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerCollector").finish_non_exhaustive()
    }
}

fn end_label(reason: EndReason) -> &'static str {
    match reason {
        EndReason::SourceEnded => "source_ended",
        EndReason::Stopped => "stopped",
        EndReason::TimedOut => "timed_out",
        EndReason::Shutdown => "shutdown",
        EndReason::ClientGone => "client_gone",
        EndReason::Lagged => "lagged",
        EndReason::Replaced => "replaced",
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One unlabelled sample.
fn one(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric: &impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    let e = encoder.encode_descriptor(name, help, unit, metric.metric_type())?;
    metric.encode(e)
}

impl Collector for ManagerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(engine) = self.engine.upgrade() else {
            return Ok(());
        };
        let counts = engine.fanout.meter.counts();
        let (census, deliveries) = engine.registry.census();
        let (history, history_bytes) = {
            let core = engine.core.lock();
            (core.history.len(), core.history_bytes)
        };
        let (backend, up) = match &engine.transport {
            Transport::Memory => ("memory", true),
            Transport::Shared(b) => (b.name(), b.is_connected()),
        };

        let mut e = encoder.encode_descriptor(
            "htmx_sse_connections",
            "Open connections by kind and state",
            None,
            MetricType::Gauge,
        )?;
        // The manager's own kind in every state, 0 included, so that a
        // dashboard shows 0 rather than no data; other kinds as seen.
        for state in ConnectionState::ALL {
            let n = census
                .iter()
                .filter(|(k, s, _)| **k == *engine.kind && *s == state)
                .map(|(_, _, n)| *n)
                .sum();
            let labels = [("kind", engine.kind.as_str()), ("state", state.as_str())];
            ConstGauge::new(gauge(n)).encode(e.encode_family(&labels)?)?;
        }
        for (kind, state, n) in census.iter().filter(|(k, _, _)| **k != *engine.kind) {
            let labels = [("kind", &**kind), ("state", state.as_str())];
            ConstGauge::new(gauge(*n)).encode(e.encode_family(&labels)?)?;
        }
        one(
            &mut encoder,
            "htmx_sse_connects",
            "Connections opened",
            None,
            &ConstCounter::new(counts.connects),
        )?;
        let mut e = encoder.encode_descriptor(
            "htmx_sse_disconnects",
            "Connections ended, by reason (lagged: closed for falling behind)",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in &counts.ends {
            let labels = [("reason", end_label(*reason))];
            ConstCounter::new(*n).encode(e.encode_family(&labels)?)?;
        }
        let mut e = encoder.encode_descriptor(
            "htmx_sse_resumes",
            "Connections that asked to resume: exact, or the reset they got",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(counts.resumes_exact).encode(e.encode_family(&[("result", "exact")])?)?;
        for (reason, n) in &counts.resets {
            let labels = [("result", reason.as_str())];
            ConstCounter::new(*n).encode(e.encode_family(&labels)?)?;
        }
        one(
            &mut encoder,
            "htmx_sse_deliveries",
            "Messages written to connections",
            None,
            &ConstCounter::new(deliveries),
        )?;
        one(
            &mut encoder,
            "htmx_sse_written",
            "Bytes of SSE written to connections, before compression and HTTP framing",
            Some(&Unit::Bytes),
            &ConstCounter::new(counts.bytes),
        )?;
        let mut e = encoder.encode_descriptor(
            "htmx_sse_published",
            "Messages published by this process, by type",
            None,
            MetricType::Counter,
        )?;
        for (t, n) in &counts.published {
            let labels = [("type", t.as_str())];
            ConstCounter::new(*n).encode(e.encode_family(&labels)?)?;
        }
        if counts.published_other > 0 {
            let labels = [("type", "(other)")];
            ConstCounter::new(counts.published_other).encode(e.encode_family(&labels)?)?;
        }
        one(
            &mut encoder,
            "htmx_sse_publish_failures",
            "Publishes refused or failed",
            None,
            &ConstCounter::new(counts.publish_failures),
        )?;
        let mut e = encoder.encode_descriptor(
            "htmx_sse_publish_duration",
            "Time from send() to its return",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(counts.latency.iter().copied())
            .collect();
        let count = counts.latency.iter().sum();
        e.encode_histogram::<NoLabelSet>(counts.latency_sum, count, &buckets, None)?;
        one(
            &mut encoder,
            "htmx_sse_history_messages",
            "Messages the history holds",
            None,
            &ConstGauge::new(gauge(history)),
        )?;
        one(
            &mut encoder,
            "htmx_sse_history",
            "Bytes the history holds",
            Some(&Unit::Bytes),
            &ConstGauge::new(gauge(history_bytes)),
        )?;
        let mut e = encoder.encode_descriptor(
            "htmx_sse_backend_up",
            "1 when the backend can be reached",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(up)).encode(e.encode_family(&[("backend", backend)])?)?;
        Ok(())
    }
}
