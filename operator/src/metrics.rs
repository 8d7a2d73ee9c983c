//! Prometheus metrics of the operator (served on the admin port at /metrics).
//!
//! - `realtime_operator_reconciliations_total{outcome}`: finished reconciles, by outcome
//!   (`applied`, `paused`, `invalid_spec`, `error`);
//! - `realtime_operator_reconcile_errors_total{error}`: failed reconciles, by error kind;
//! - `realtime_operator_reconcile_duration_seconds`: reconcile latency histogram;
//! - `realtime_operator_leader`: 1 while this replica acts as the leader (from acquiring the
//!   Lease until it steps down or shuts down; always without leader election), else 0.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub reconciliations: Family<OutcomeLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("realtime_operator");
        let reconciliations = Family::<OutcomeLabels, Counter>::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        // 1 ms .. ~16 s
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let leader = Gauge::default();
        registry.register(
            "reconciliations",
            "Finished reconciles by outcome",
            reconciliations.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles by error kind",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            reconcile_duration.clone(),
        );
        registry.register("leader", "1 while this replica leads", leader.clone());
        Self {
            registry,
            reconciliations,
            reconcile_errors,
            reconcile_duration,
            leader,
        }
    }
}

impl Metrics {
    /// Records one finished reconcile that started at `started`.
    pub fn observe(&self, started: Instant, outcome: &'static str) {
        self.reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        self.reconciliations
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub fn error(&self, error: &'static str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels { error })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names() {
        let m = Metrics::default();
        m.observe(Instant::now(), "applied");
        m.error("apply");
        m.leader.set(1);
        let text = m.encode();
        for needle in [
            "realtime_operator_reconciliations_total{outcome=\"applied\"} 1",
            "realtime_operator_reconcile_errors_total{error=\"apply\"} 1",
            "realtime_operator_reconcile_duration_seconds_count 1",
            "realtime_operator_leader 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}
