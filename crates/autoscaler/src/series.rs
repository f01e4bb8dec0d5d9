//! Per-service time series: every scrape's point in memory for `raw_retention_s`, and
//! per-minute aggregates written to the autoscaler's store and kept `retention_days`.

use std::collections::{BTreeMap, VecDeque};

use mlmesh_store::{Store, StoreError};
use rusqlite::params;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::scrape::quantile;

pub const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE minutes (
    service TEXT NOT NULL,
    t_ms INTEGER NOT NULL,
    rps REAL NOT NULL,
    errors_per_s REAL NOT NULL,
    p99_ms REAL,
    in_flight REAL NOT NULL,
    instances INTEGER NOT NULL,
    PRIMARY KEY (service, t_ms)
);
",
    "
ALTER TABLE minutes ADD COLUMN cpu_cores REAL NOT NULL DEFAULT 0;
",
];

/// One point of a service's series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Point {
    /// Milliseconds since the epoch (for minutes: the minute's start).
    pub t_ms: i64,
    /// Requests per second over all its instances.
    pub rps: f64,
    pub errors_per_s: f64,
    /// 99th-percentile latency of the requests in the interval (none without requests).
    pub p99_ms: Option<f64>,
    /// Requests in flight, summed over instances (per minute: the mean).
    pub in_flight: f64,
    /// Instances that answered the scrape.
    pub instances: u32,
    /// CPU cores in use, summed over instances (process CPU time per second).
    #[serde(default)]
    pub cpu_cores: f64,
}

/// A minute being summed up.
#[derive(Debug, Default)]
struct Minute {
    start_ms: i64,
    requests: f64,
    errors: f64,
    seconds: f64,
    in_flight: f64,
    cpu_seconds: f64,
    points: u32,
    instances: u32,
    buckets: BTreeMap<u64, f64>,
}

impl Minute {
    fn point(&self) -> Point {
        let seconds = self.seconds.max(1e-9);
        Point {
            t_ms: self.start_ms,
            rps: self.requests / seconds,
            errors_per_s: self.errors / seconds,
            p99_ms: quantile(&self.buckets, 0.99).map(|s| s * 1000.0),
            in_flight: self.in_flight / f64::from(self.points.max(1)),
            instances: self.instances,
            cpu_cores: self.cpu_seconds / seconds,
        }
    }
}

#[derive(Debug, Default)]
struct ServiceSeries {
    raw: VecDeque<Point>,
    minute: Option<Minute>,
}

/// What one scrape saw of one service.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub t_ms: i64,
    pub seconds: f64,
    pub requests: f64,
    pub errors: f64,
    pub in_flight: f64,
    pub cpu_seconds: f64,
    pub instances: u32,
    pub buckets: BTreeMap<u64, f64>,
}

/// All services' series.
#[derive(Debug, Default)]
pub struct Series {
    services: BTreeMap<String, ServiceSeries>,
}

impl Series {
    /// Adds a scrape's observation; returns the minute it completed, if any, to be stored.
    pub fn add(&mut self, service: &str, seen: Observed, raw_retention_ms: i64) -> Option<Point> {
        let series = self.services.entry(service.to_string()).or_default();
        let seconds = seen.seconds.max(1e-9);
        series.raw.push_back(Point {
            t_ms: seen.t_ms,
            rps: seen.requests / seconds,
            errors_per_s: seen.errors / seconds,
            p99_ms: quantile(&seen.buckets, 0.99).map(|s| s * 1000.0),
            in_flight: seen.in_flight,
            instances: seen.instances,
            cpu_cores: seen.cpu_seconds / seconds,
        });
        while series
            .raw
            .front()
            .is_some_and(|p| seen.t_ms - p.t_ms > raw_retention_ms)
        {
            series.raw.pop_front();
        }
        let start = seen.t_ms - seen.t_ms.rem_euclid(60_000);
        let mut done = None;
        if series.minute.as_ref().is_some_and(|m| m.start_ms != start) {
            done = series.minute.take().map(|m| m.point());
        }
        let minute = series.minute.get_or_insert_with(|| Minute {
            start_ms: start,
            ..Minute::default()
        });
        minute.requests += seen.requests;
        minute.errors += seen.errors;
        minute.seconds += seen.seconds;
        minute.in_flight += seen.in_flight;
        minute.cpu_seconds += seen.cpu_seconds;
        minute.points += 1;
        minute.instances = minute.instances.max(seen.instances);
        for (bound, count) in seen.buckets {
            *minute.buckets.entry(bound).or_default() += count;
        }
        done
    }

    pub fn services(&self) -> impl Iterator<Item = (&String, Option<&Point>)> {
        self.services.iter().map(|(name, s)| (name, s.raw.back()))
    }

    pub fn newest(&self, service: &str) -> Option<&Point> {
        self.services.get(service).and_then(|s| s.raw.back())
    }

    pub fn raw(&self, service: &str, since_ms: i64) -> Option<Vec<Point>> {
        self.services.get(service).map(|s| {
            s.raw
                .iter()
                .filter(|p| p.t_ms >= since_ms)
                .cloned()
                .collect()
        })
    }
}

/// Stores a finished minute and drops minutes older than the retention.
pub async fn store_minute(
    store: &Store,
    service: String,
    point: Point,
    retention_ms: i64,
) -> Result<(), StoreError> {
    store
        .write(move |tx| {
            tx.execute(
                "INSERT OR REPLACE INTO minutes (service, t_ms, rps, errors_per_s, p99_ms, in_flight, instances, cpu_cores)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    service,
                    point.t_ms,
                    point.rps,
                    point.errors_per_s,
                    point.p99_ms,
                    point.in_flight,
                    point.instances,
                    point.cpu_cores
                ],
            )?;
            tx.execute(
                "DELETE FROM minutes WHERE t_ms < ?1",
                params![point.t_ms - retention_ms],
            )?;
            Ok(())
        })
        .await
}

/// Stored minutes of `service` from `since_ms` on, oldest first.
pub async fn minutes(
    store: &Store,
    service: String,
    since_ms: i64,
) -> Result<Vec<Point>, StoreError> {
    store
        .read(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT t_ms, rps, errors_per_s, p99_ms, in_flight, instances, cpu_cores FROM minutes
                 WHERE service = ?1 AND t_ms >= ?2 ORDER BY t_ms",
            )?;
            let rows = stmt.query_map(params![service, since_ms], |r| {
                Ok(Point {
                    t_ms: r.get(0)?,
                    rps: r.get(1)?,
                    errors_per_s: r.get(2)?,
                    p99_ms: r.get(3)?,
                    in_flight: r.get(4)?,
                    instances: r.get(5)?,
                    cpu_cores: r.get(6)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(t_ms: i64, requests: f64) -> Observed {
        Observed {
            t_ms,
            seconds: 1.0,
            requests,
            cpu_seconds: requests / 200.0,
            instances: 2,
            buckets: BTreeMap::from([(1_000_000, requests), (u64::MAX, requests)]),
            ..Observed::default()
        }
    }

    #[test]
    fn raw_points_expire_and_minutes_roll_up() {
        let mut s = Series::default();
        let base = 1_700_000_040_000 + 40_000; // 40 s into a minute
        let mut finished = Vec::new();
        for i in 0..30 {
            if let Some(p) = s.add("model-trees", seen(base + i * 1000, 10.0), 10_000) {
                finished.push(p);
            }
        }
        assert_eq!(
            s.raw("model-trees", 0).unwrap().len(),
            11,
            "ten seconds kept"
        );
        assert_eq!(finished.len(), 1);
        let minute = &finished[0];
        assert_eq!(minute.t_ms % 60_000, 0);
        assert!((minute.rps - 10.0).abs() < 1e-9);
        assert!((minute.cpu_cores - 0.05).abs() < 1e-9);
        assert_eq!(minute.instances, 2);
        assert!(minute.p99_ms.unwrap() <= 1.0);
        assert!(s.raw("unknown", 0).is_none());
    }
}
