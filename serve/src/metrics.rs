//! The server's own metrics (requests by route and status, latency,
//! refusals), exported at `/metrics` after the run's when it serves a run.

use prometheus::{exponential_buckets, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

/// Every metric of the server.
pub(crate) struct ServerMetrics {
    registry: Registry,
    /// Requests answered, by route and status.
    pub requests: IntCounterVec,
    /// Seconds to answer, by route.
    pub duration: HistogramVec,
    /// Searches refused with 503 (too many at once).
    pub searches_refused: IntCounter,
    /// Connections closed at once (too many open).
    pub connections_refused: IntCounter,
}

impl ServerMetrics {
    pub fn new() -> ServerMetrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("medkg_http_requests_total", "HTTP requests answered, by route and status"),
            &["route", "status"],
        )
        .expect("valid metric");
        let buckets = exponential_buckets(0.0002, 2.0, 18).unwrap_or_default();
        let duration = HistogramVec::new(
            HistogramOpts::new("medkg_http_request_duration_seconds", "Seconds to answer an HTTP request, by route")
                .buckets(buckets),
            &["route"],
        )
        .expect("valid metric");
        let searches_refused =
            IntCounter::new("medkg_http_searches_refused_total", "Searches refused with 503: too many at once")
                .expect("valid metric");
        let connections_refused =
            IntCounter::new("medkg_http_connections_refused_total", "Connections closed at once: too many open")
                .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(searches_refused.clone()),
            Box::new(connections_refused.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        ServerMetrics { registry, requests, duration, searches_refused, connections_refused }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_default()
    }
}
