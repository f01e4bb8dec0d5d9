//! Reading a load trace into a regular series.
//!
//! Two shapes of CSV are accepted:
//! - a rate trace, `timestamp,value` (NAB style): one number per timestamp;
//! - an arrival log, a timestamp per request (Azure style, `TIMESTAMP,…` with other columns):
//!   requests are counted per bin.
//!
//! Real traces are untidy, and the handling is fixed and reported rather than guessed:
//! rows are sorted by time; values stamped at the same instant are averaged (NAB repeats an hour
//! at a DST switch); the step is the median spacing; gaps are filled by linear interpolation
//! between their neighbours. Timestamps are `YYYY-MM-DD HH:MM:SS[.fraction]` (a `T` may replace
//! the space) or seconds since the epoch.

use std::io::Read;

use chrono::NaiveDateTime;

/// A regular series: `values[i]` is the value at `start + i·step` seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub start: f64,
    pub step: f64,
    pub values: Vec<f64>,
}

impl Series {
    pub fn new(start: f64, step: f64, values: Vec<f64>) -> Self {
        Self {
            start,
            step,
            values,
        }
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Seconds the series covers.
    pub fn span(&self) -> f64 {
        self.step * self.values.len() as f64
    }
}

/// What reading a trace had to fix.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Ingest {
    pub rows: usize,
    /// Rows whose timestamp was earlier than the row before.
    pub out_of_order: usize,
    /// Rows sharing a timestamp with another row (averaged into one point).
    pub duplicates: usize,
    /// Points filled in by interpolation.
    pub filled: usize,
    /// `rate` or `arrivals`.
    pub kind: &'static str,
}

/// Why a trace cannot be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TraceError {
    #[error("the trace is empty: it needs a header and at least two rows")]
    Empty,
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("the trace is not CSV: {0}")]
    Csv(String),
    #[error("all {0} rows have the same timestamp; a rate trace needs at least two instants")]
    OneInstant(usize),
    #[error("the bin width must be a positive number of seconds, not {0}")]
    BadBin(f64),
    #[error("the trace has {points} points at a {step} s step; at most {max} are read")]
    TooLong {
        points: usize,
        step: f64,
        max: usize,
    },
}

/// Most points a trace may expand to (two years at one minute), so a stray timestamp cannot
/// ask for billions of interpolated points.
pub const MAX_POINTS: usize = 1_051_200;

/// Parses a timestamp: a date-time without zone (taken as UTC) or epoch seconds.
pub fn parse_timestamp(text: &str) -> Option<f64> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return seconds.is_finite().then_some(seconds);
    }
    for format in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            let utc = t.and_utc();
            return Some(utc.timestamp() as f64 + f64::from(utc.timestamp_subsec_nanos()) * 1e-9);
        }
    }
    None
}

/// Reads a trace. `bin` is the bin width in seconds for arrival logs (ignored for rate traces).
pub fn read_trace(input: impl Read, bin: f64) -> Result<(Series, Ingest), TraceError> {
    if !(bin.is_finite() && bin > 0.0) {
        return Err(TraceError::BadBin(bin));
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .trim(csv::Trim::All)
        .from_reader(input);
    let headers = reader
        .headers()
        .map_err(|e| TraceError::Csv(e.to_string()))?
        .clone();
    let rate = headers.len() == 2
        && headers
            .get(1)
            .is_some_and(|h| h.eq_ignore_ascii_case("value"));
    let mut points: Vec<(f64, f64)> = Vec::new();
    let mut out_of_order = 0;
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let record = record.map_err(|e| TraceError::Line {
            line,
            message: e.to_string(),
        })?;
        let stamp = record.get(0).unwrap_or("");
        let t = parse_timestamp(stamp).ok_or_else(|| TraceError::Line {
            line,
            message: format!(
                "{stamp:?} is not a timestamp (YYYY-MM-DD HH:MM:SS[.fraction] or epoch seconds)"
            ),
        })?;
        let value = if rate {
            let text = record.get(1).unwrap_or("");
            let v: f64 = text.parse().map_err(|_| TraceError::Line {
                line,
                message: format!("value {text:?} is not a number"),
            })?;
            if !v.is_finite() || v < 0.0 {
                return Err(TraceError::Line {
                    line,
                    message: format!("value {v} is not a finite load (≥ 0)"),
                });
            }
            v
        } else {
            1.0
        };
        if points.last().is_some_and(|&(last, _)| t < last) {
            out_of_order += 1;
        }
        points.push((t, value));
    }
    if points.len() < 2 {
        return Err(TraceError::Empty);
    }
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut ingest = Ingest {
        rows: points.len(),
        out_of_order,
        kind: if rate { "rate" } else { "arrivals" },
        ..Ingest::default()
    };
    let series = if rate {
        regularise(&points, &mut ingest)?
    } else {
        bin_arrivals(&points, bin)?
    };
    Ok((series, ingest))
}

/// Counts arrivals per `bin` seconds, from the first arrival's bin to the last one's.
fn bin_arrivals(points: &[(f64, f64)], bin: f64) -> Result<Series, TraceError> {
    let first = points[0].0;
    let start = (first / bin).floor() * bin;
    let last = points[points.len() - 1].0;
    let n = ((last - start) / bin).floor() as usize + 1;
    if n > MAX_POINTS {
        return Err(TraceError::TooLong {
            points: n,
            step: bin,
            max: MAX_POINTS,
        });
    }
    let mut values = vec![0.0; n];
    for &(t, _) in points {
        let i = (((t - start) / bin).floor() as usize).min(n - 1);
        values[i] += 1.0;
    }
    Ok(Series::new(start, bin, values))
}

/// Merges duplicate instants, finds the step, fills gaps.
fn regularise(points: &[(f64, f64)], ingest: &mut Ingest) -> Result<Series, TraceError> {
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(points.len());
    let mut count = 0.0;
    for &(t, v) in points {
        match merged.last_mut() {
            Some(last) if last.0 == t => {
                ingest.duplicates += 1;
                count += 1.0;
                last.1 += (v - last.1) / count;
            }
            _ => {
                count = 1.0;
                merged.push((t, v));
            }
        }
    }
    if merged.len() < 2 {
        return Err(TraceError::OneInstant(points.len()));
    }
    let mut gaps: Vec<f64> = merged.windows(2).map(|w| w[1].0 - w[0].0).collect();
    gaps.sort_by(f64::total_cmp);
    let step = gaps[gaps.len() / 2];
    let start = merged[0].0;
    let end = merged[merged.len() - 1].0;
    let n = ((end - start) / step).round() as usize + 1;
    if n > MAX_POINTS {
        return Err(TraceError::TooLong {
            points: n,
            step,
            max: MAX_POINTS,
        });
    }
    // Each grid point takes the value of a row within half a step, else interpolates between
    // the rows around it.
    let mut values = Vec::with_capacity(n);
    let mut j = 0;
    for i in 0..n {
        let t = start + i as f64 * step;
        while j + 1 < merged.len() && merged[j + 1].0 <= t + step / 2.0 {
            j += 1;
        }
        let (t0, v0) = merged[j];
        if (t - t0).abs() <= step / 2.0 || j + 1 == merged.len() {
            values.push(v0);
            continue;
        }
        let (t1, v1) = merged[j + 1];
        ingest.filled += 1;
        values.push(v0 + (v1 - v0) * (t - t0) / (t1 - t0));
    }
    Ok(Series::new(start, step, values))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<(Series, Ingest), TraceError> {
        read_trace(text.as_bytes(), 1.0)
    }

    #[test]
    fn a_regular_trace_reads_as_is() {
        let (s, ingest) =
            read("timestamp,value\n2014-04-10 00:00:00,1\n2014-04-10 00:05:00,2\n2014-04-10 00:10:00,3\n")
                .unwrap();
        assert_eq!(s.step, 300.0);
        assert_eq!(s.values, vec![1.0, 2.0, 3.0]);
        assert_eq!(ingest.filled, 0);
        assert_eq!(ingest.kind, "rate");
    }

    #[test]
    fn gaps_duplicates_and_disorder_are_repaired_and_reported() {
        let text = "timestamp,value\n0,0\n60,6\n60,8\n240,10\n120,4\n300,12\n";
        let (s, ingest) = read(text).unwrap();
        assert_eq!(s.step, 60.0);
        // 0, 60 (mean of 6 and 8), 120, 180 (filled between 4 and 10), 240, 300.
        assert_eq!(s.values, vec![0.0, 7.0, 4.0, 7.0, 10.0, 12.0]);
        assert_eq!(ingest.duplicates, 1);
        assert_eq!(ingest.out_of_order, 1);
        assert_eq!(ingest.filled, 1);
    }

    #[test]
    fn arrival_logs_are_counted_per_bin() {
        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,10,2\n2023-11-16 18:15:46.9,1,1\n2023-11-16 18:15:48.1,1,1\n";
        let (s, ingest) = read(text).unwrap();
        assert_eq!(ingest.kind, "arrivals");
        assert_eq!(s.values, vec![2.0, 0.0, 1.0]);
    }

    #[test]
    fn bad_traces_are_refused_with_the_line() {
        assert_eq!(read("timestamp,value\n"), Err(TraceError::Empty));
        assert_eq!(read(""), Err(TraceError::Empty));
        assert!(matches!(
            read("timestamp,value\n0,1\n60,abc\n"),
            Err(TraceError::Line { line: 3, .. })
        ));
        assert!(matches!(
            read("timestamp,value\nyesterday,1\n60,2\n"),
            Err(TraceError::Line { line: 2, .. })
        ));
        assert!(matches!(
            read("timestamp,value\n0,1\n60,-2\n"),
            Err(TraceError::Line { line: 3, .. })
        ));
        assert!(matches!(
            read("timestamp,value\n0,1\n60,NaN\n"),
            Err(TraceError::Line { line: 3, .. })
        ));
        assert_eq!(
            read("timestamp,value\n5,1\n5,2\n"),
            Err(TraceError::OneInstant(2))
        );
        assert!(matches!(
            read("timestamp,value\n0,1\n60,1\n120,1\n1e9,2\n"),
            Err(TraceError::TooLong { .. })
        ));
        assert_eq!(
            read_trace(&b"t\n1\n2\n"[..], 0.0),
            Err(TraceError::BadBin(0.0))
        );
    }
}
