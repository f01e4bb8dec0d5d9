//! Anomaly events on each service's latency and error series, as they are collected: the
//! online detector of `mlmesh-forecast` (recent-median baseline, robust z-score) per series.
//! Events are kept (the last 1000), counted in `/metrics` as `mlmesh_anomalies_total`, and
//! served at `GET /v1/anomalies`.

use std::collections::{BTreeMap, VecDeque};

use mlmesh_forecast::anomaly::{Detector, Settings};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::series::Point;

/// One anomaly event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AnomalyEvent {
    pub service: String,
    /// `p99_ms` or `errors_per_s`.
    pub series: String,
    pub at_ms: i64,
    pub value: f64,
    /// What was normal for that moment.
    pub expected: f64,
    /// Robust z-score.
    pub score: f64,
}

/// Detectors per (service, series) and the events they raised.
#[derive(Debug, Default)]
pub struct Anomalies {
    detectors: BTreeMap<(String, &'static str), Detector>,
    pub events: VecDeque<AnomalyEvent>,
}

/// Scrape-rate series have no daily season to learn within their retention: the baseline is
/// the recent median; two minutes of residuals make the yardstick; one event per half minute.
fn settings() -> Settings {
    Settings {
        period: 1,
        window: 120,
        threshold: 5.0,
        warmup: 60,
        refractory: 30,
    }
}

impl Anomalies {
    /// Detectors yet to learn, and the events raised before (oldest first).
    pub fn with_events(events: Vec<AnomalyEvent>) -> Self {
        Self {
            detectors: BTreeMap::new(),
            events: events.into(),
        }
    }

    /// Feeds a service's newest point; returns the events it raised.
    pub fn observe(&mut self, service: &str, point: &Point) -> Vec<AnomalyEvent> {
        let mut raised = Vec::new();
        let values = [
            ("p99_ms", point.p99_ms),
            ("errors_per_s", Some(point.errors_per_s)),
        ];
        for (series, value) in values {
            let Some(value) = value else { continue };
            let detector = self
                .detectors
                .entry((service.to_string(), series))
                .or_insert_with(|| Detector::new(settings()));
            if let Some(event) = detector.observe(value) {
                metrics::counter!("mlmesh_anomalies_total", "service" => service.to_string(), "series" => series)
                    .increment(1);
                raised.push(AnomalyEvent {
                    service: service.to_string(),
                    series: series.to_string(),
                    at_ms: point.t_ms,
                    value,
                    expected: event.expected,
                    score: event.score,
                });
            }
        }
        for event in &raised {
            tracing::warn!(service = %event.service, series = %event.series, value = event.value,
                expected = event.expected, score = event.score, "anomaly");
            self.events.push_back(event.clone());
        }
        while self.events.len() > crate::HISTORY {
            self.events.pop_front();
        }
        raised
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_latency_jump_raises_one_event() {
        let mut a = Anomalies::default();
        let mut raised = Vec::new();
        for i in 0..200_i64 {
            let p99 = if (150..160).contains(&i) {
                80.0
            } else {
                2.0 + ((i * 7919) % 13) as f64 / 13.0
            };
            let point = Point {
                t_ms: i * 1000,
                rps: 100.0,
                errors_per_s: 0.0,
                p99_ms: Some(p99),
                in_flight: 1.0,
                instances: 1,
                cpu_cores: 0.5,
            };
            raised.extend(a.observe("model-trees", &point));
        }
        assert_eq!(raised.len(), 1, "{raised:?}");
        assert_eq!(
            (raised[0].series.as_str(), raised[0].at_ms),
            ("p99_ms", 150_000)
        );
        assert!(raised[0].expected < 4.0);
        assert_eq!(a.events.len(), 1);
    }
}
