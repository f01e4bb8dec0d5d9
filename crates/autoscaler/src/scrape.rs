//! Reading one instance's `/metrics` (Prometheus text format) into the counters the autoscaler
//! follows, and turning two readings into rates.
//!
//! Requests to `/metrics`, the health probes and the gateway's `/v1/clients` are left out:
//! they are the platform watching itself, not load.
//!
//! The line parser is ours: prometheus-parse (the maintained text parser) ends a label set at
//! the first `}`, which breaks on the route templates in our labels (`/v2/models/{name}/infer`).
//! Only samples are read (name, labels, value); comments and timestamps are skipped.

use std::collections::BTreeMap;

/// The platform watching itself: scrapes, health probes, and abuse control's reads.
const NOT_LOAD: [&str; 4] = [
    "/metrics",
    "/v2/health/live",
    "/v2/health/ready",
    "/v1/clients",
];

/// Cumulative counters of one instance at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    pub requests: f64,
    /// Answers with a 5xx status.
    pub errors: f64,
    pub in_flight: f64,
    /// The process's CPU time so far (`process_cpu_seconds_total`).
    pub cpu_seconds: f64,
    /// Cumulative latency buckets: upper bound (seconds) → requests at or below it.
    pub buckets: BTreeMap<u64, f64>,
}

/// Bucket bounds as integer nanoseconds, so they can key a map.
fn bound_key(seconds: f64) -> u64 {
    if seconds.is_infinite() {
        u64::MAX
    } else {
        (seconds * 1e9).round() as u64
    }
}

/// One sample line: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses one line of the text format; `None` for comments, blank and malformed lines.
pub fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        loop {
            // Label name up to '='; a '}' here closes the set.
            let start = chars.peek()?.0;
            let (eq, c) = chars.find(|&(_, c)| c == '=' || c == '}')?;
            if c == '}' {
                rest = &after[eq + 1..];
                break;
            }
            let key = after[start..eq]
                .trim()
                .trim_start_matches(',')
                .trim()
                .to_string();
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break,
                    other => value.push(other),
                }
            }
            labels.push((key, value));
            match chars.peek()?.1 {
                ',' => {
                    chars.next();
                }
                '}' => {}
                _ => return None,
            }
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

impl Reading {
    pub fn parse(text: &str) -> Self {
        let mut reading = Self::default();
        for sample in text.lines().filter_map(parse_line) {
            if sample.name == "process_cpu_seconds_total" {
                reading.cpu_seconds += sample.value;
                continue;
            }
            if sample.label("route").is_some_and(|r| NOT_LOAD.contains(&r)) {
                continue;
            }
            match sample.name.strip_prefix("http_") {
                Some("requests_total") => {
                    reading.requests += sample.value;
                    if sample.label("status").is_some_and(|s| s.starts_with('5')) {
                        reading.errors += sample.value;
                    }
                }
                Some("requests_in_flight") => reading.in_flight += sample.value,
                Some("request_duration_seconds_bucket") => {
                    let bound = match sample.label("le") {
                        Some("+Inf") => f64::INFINITY,
                        Some(le) => match le.parse() {
                            Ok(v) => v,
                            Err(_) => continue,
                        },
                        None => continue,
                    };
                    *reading.buckets.entry(bound_key(bound)).or_default() += sample.value;
                }
                _ => {}
            }
        }
        reading
    }
}

/// What happened between two readings.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Delta {
    pub requests: f64,
    pub errors: f64,
    pub cpu_seconds: f64,
}

/// Requests and errors since `before`, and the latency buckets' increase. A counter that went
/// down means the instance restarted: everything since its start counts.
pub fn delta(before: &Reading, after: &Reading) -> (Delta, BTreeMap<u64, f64>) {
    let since = |b: f64, a: f64| if a >= b { a - b } else { a };
    let buckets = after
        .buckets
        .iter()
        .map(|(bound, count)| {
            let old = before.buckets.get(bound).copied().unwrap_or(0.0);
            (*bound, since(old, *count))
        })
        .collect();
    (
        Delta {
            requests: since(before.requests, after.requests),
            errors: since(before.errors, after.errors),
            cpu_seconds: since(before.cpu_seconds, after.cpu_seconds),
        },
        buckets,
    )
}

/// The `q` quantile (0–1) in seconds from cumulative bucket counts, interpolating inside the
/// bucket as Prometheus's `histogram_quantile` does; `None` without requests.
pub fn quantile(buckets: &BTreeMap<u64, f64>, q: f64) -> Option<f64> {
    let total = buckets
        .get(&u64::MAX)
        .copied()
        .or_else(|| buckets.values().last().copied())?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for (&bound, &count) in buckets {
        if count >= rank {
            if bound == u64::MAX {
                // Beyond the largest finite bound: the best answer is that bound.
                return Some(lower.0);
            }
            let upper = bound as f64 / 1e9;
            let inside = count - lower.1;
            let fraction = if inside > 0.0 {
                (rank - lower.1) / inside
            } else {
                1.0
            };
            return Some(lower.0 + (upper - lower.0) * fraction);
        }
        if bound != u64::MAX {
            lower = (bound as f64 / 1e9, count);
        }
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE http_requests_total counter
http_requests_total{service="model-trees",method="POST",route="/v2/models/{name}/infer",status="200"} 90
http_requests_total{service="model-trees",method="POST",route="/v2/models/{name}/infer",status="503"} 10
http_requests_total{service="model-trees",method="GET",route="/metrics",status="200"} 500
# TYPE http_requests_in_flight gauge
http_requests_in_flight{service="model-trees"} 3
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{service="model-trees",method="POST",route="/v2/models/{name}/infer",le="0.001"} 50
http_request_duration_seconds_bucket{service="model-trees",method="POST",route="/v2/models/{name}/infer",le="0.01"} 90
http_request_duration_seconds_bucket{service="model-trees",method="POST",route="/v2/models/{name}/infer",le="0.1"} 100
http_request_duration_seconds_bucket{service="model-trees",method="POST",route="/v2/models/{name}/infer",le="+Inf"} 100
http_request_duration_seconds_sum{service="model-trees",method="POST",route="/v2/models/{name}/infer"} 0.5
http_request_duration_seconds_count{service="model-trees",method="POST",route="/v2/models/{name}/infer"} 100
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 2.5
"#;

    #[test]
    fn a_reading_counts_load_but_not_the_platform_watching_itself() {
        let r = Reading::parse(TEXT);
        assert_eq!((r.requests, r.errors, r.in_flight), (100.0, 10.0, 3.0));
        assert_eq!(r.buckets.get(&1_000_000), Some(&50.0));
        assert_eq!(r.buckets.get(&u64::MAX), Some(&100.0));
        assert_eq!(r.cpu_seconds, 2.5);
    }

    #[test]
    fn lines_with_braces_and_escapes_in_label_values_parse() {
        let s =
            parse_line(r#"m{a="x{y}z",b="q\"uote",c="back\\slash"} 1.5e3 1700000000000"#).unwrap();
        assert_eq!(s.name, "m");
        assert_eq!(s.label("a"), Some("x{y}z"));
        assert_eq!(s.label("b"), Some("q\"uote"));
        assert_eq!(s.label("c"), Some("back\\slash"));
        assert_eq!(s.value, 1500.0);
        assert_eq!(parse_line("up 1").unwrap().value, 1.0);
        assert_eq!(parse_line("# HELP up whether"), None);
        assert_eq!(parse_line("broken{a=1} 2"), None);
        assert_eq!(parse_line("m{} NaN").map(|s| s.value.is_nan()), Some(true));
    }

    #[test]
    fn deltas_and_quantiles_follow_prometheus() {
        let before = Reading::default();
        let after = Reading::parse(TEXT);
        let (d, buckets) = delta(&before, &after);
        assert_eq!((d.requests, d.cpu_seconds), (100.0, 2.5));
        // p50 is inside the first bucket: 50 of 50 → its upper bound.
        assert!((quantile(&buckets, 0.5).unwrap() - 0.001).abs() < 1e-12);
        // p99: rank 99 in (0.01, 0.1] holding requests 91–100 → 0.01 + 0.09 · 9/10.
        assert!((quantile(&buckets, 0.99).unwrap() - 0.091).abs() < 1e-9);
        // A restarted instance (counter went down) counts from zero.
        let restarted = Reading {
            requests: 5.0,
            ..Reading::default()
        };
        assert_eq!(delta(&after, &restarted).0.requests, 5.0);
        assert_eq!(quantile(&BTreeMap::new(), 0.99), None);
    }
}
