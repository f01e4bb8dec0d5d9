//! Per-column machinery shared by every input format: type inference (pass 1), typed Arrow
//! builders with statistics (pass 2).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use cardinality_estimator::CardinalityEstimator;
use foldhash::quality::RandomState;

use arrow_array::ArrayRef;
use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use mlmesh_protocol::data::{ColumnStats, ColumnType, TopValue};

use super::IngestError;

/// The sketch counts distinct values exactly up to this many (its array representation), and
/// estimates beyond (HyperLogLog++, about 1.6% standard error at precision 12).
const SKETCH_EXACT_UP_TO: usize = 128;
/// Category counting keeps at most this many keys; below it, text columns' distinct counts are
/// exact.
const TOP_KEYS_CAP: usize = 10_000;
const TOP_N: usize = 10;

pub fn parse_bool(text: &str) -> Option<bool> {
    if text.eq_ignore_ascii_case("true") {
        Some(true)
    } else if text.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// Finite floats only: an infinite feature value is a data error, not a number to train on.
/// `fast-float2` parses the whole cell (a trailing character is an error, as with std), about
/// twice as fast as `str::parse` — float parsing was the largest cost of typing a CSV.
pub fn parse_float(text: &str) -> Option<f64> {
    fast_float2::parse::<f64, _>(text)
        .ok()
        .filter(|v| v.is_finite())
}

/// What the non-null values of a column seen so far could all be.
#[derive(Debug, Clone, Copy)]
pub struct Inference {
    pub seen: bool,
    pub int: bool,
    pub float: bool,
    pub bool: bool,
}

impl Default for Inference {
    fn default() -> Self {
        Self {
            seen: false,
            int: true,
            float: true,
            bool: true,
        }
    }
}

impl Inference {
    /// A text cell (CSV), already trimmed and known not to be a null token.
    pub fn text(&mut self, text: &str) {
        self.seen = true;
        if self.int && text.parse::<i64>().is_err() {
            self.int = false;
        }
        if self.float && parse_float(text).is_none() {
            self.float = false;
        }
        if self.bool && parse_bool(text).is_none() {
            self.bool = false;
        }
    }

    /// A typed cell (JSON lines).
    pub fn json(&mut self, value: &serde_json::Value) {
        use serde_json::Value;
        self.seen = true;
        match value {
            Value::Bool(_) => (self.int, self.float) = (false, false),
            Value::Number(n) if n.is_i64() => self.bool = false,
            Value::Number(_) => (self.int, self.bool) = (false, false),
            _ => (self.int, self.float, self.bool) = (false, false, false),
        }
    }

    pub fn resolve(&self) -> ColumnType {
        match (self.seen, self.int, self.float, self.bool) {
            (false, ..) => ColumnType::String,
            (true, true, _, _) => ColumnType::Integer,
            (true, _, true, _) => ColumnType::Float,
            (true, _, _, true) => ColumnType::Boolean,
            _ => ColumnType::String,
        }
    }

    /// Whether `text` fits the type this column resolved to.
    pub fn fits(column_type: ColumnType, text: &str) -> bool {
        match column_type {
            ColumnType::Integer => text.parse::<i64>().is_ok(),
            ColumnType::Float => parse_float(text).is_some(),
            ColumnType::Boolean => parse_bool(text).is_some(),
            ColumnType::String => true,
        }
    }
}

#[derive(Debug)]
enum Builder {
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Str(StringBuilder),
}

/// Running statistics (Welford for mean and variance).
#[derive(Default)]
struct Stats {
    count: u64,
    nulls: u64,
    min: f64,
    max: f64,
    mean: f64,
    m2: f64,
    /// foldhash, not SipHash: statistics hash every cell, and SipHash was a tenth of ingest
    /// time. Randomly seeded per upload, so crafted data cannot force collisions.
    hasher: RandomState,
    /// Constant memory whatever the cardinality; an exact hash set was the largest cost of
    /// ingesting wide numeric files.
    distinct: CardinalityEstimator<u64>,
    top: HashMap<String, u64, RandomState>,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats")
            .field("count", &self.count)
            .field("nulls", &self.nulls)
            .field("distinct", &self.distinct.estimate())
            .finish_non_exhaustive()
    }
}

impl Stats {
    fn number(&mut self, value: f64) {
        if self.count == 0 {
            (self.min, self.max) = (value, value);
        } else {
            self.min = self.min.min(value);
            self.max = self.max.max(value);
        }
        self.count += 1;
        let delta = value - self.mean;
        #[allow(clippy::cast_precision_loss)]
        let n = self.count as f64;
        self.mean += delta / n;
        self.m2 += delta * (value - self.mean);
    }

    fn distinct<T: std::hash::Hash>(&mut self, value: T) {
        self.distinct.insert_hash(self.hasher.hash_one(value));
    }

    fn category(&mut self, value: &str) {
        if let Some(count) = self.top.get_mut(value) {
            *count += 1;
        } else if self.top.len() < TOP_KEYS_CAP {
            self.top.insert(value.to_string(), 1);
        }
    }

    fn finish(&self, numeric: bool) -> ColumnStats {
        let categories_complete = !self.top.is_empty() && self.top.len() < TOP_KEYS_CAP;
        let (distinct, distinct_exact) = if categories_complete {
            (self.top.len(), true)
        } else {
            let estimate = self.distinct.estimate();
            (estimate, estimate <= SKETCH_EXACT_UP_TO)
        };
        let numeric = numeric && self.count > 0;
        #[allow(clippy::cast_precision_loss)]
        let variance = self.m2 / self.count.max(1) as f64;
        let mut top: Vec<TopValue> = self
            .top
            .iter()
            .map(|(value, count)| TopValue {
                value: value.clone(),
                count: *count,
            })
            .collect();
        top.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
        top.truncate(TOP_N);
        ColumnStats {
            count: self.count,
            nulls: self.nulls,
            min: numeric.then_some(self.min),
            max: numeric.then_some(self.max),
            mean: numeric.then_some(self.mean),
            std: numeric.then_some(variance.sqrt()),
            distinct: distinct as u64,
            distinct_exact,
            top,
        }
    }
}

/// Builds one column's Arrow arrays batch by batch and keeps its statistics.
#[derive(Debug)]
pub struct ColumnBuilder {
    pub name: String,
    pub column_type: ColumnType,
    builder: Builder,
    stats: Stats,
}

impl ColumnBuilder {
    pub fn new(name: String, column_type: ColumnType) -> Self {
        let builder = match column_type {
            ColumnType::Integer => Builder::Int(Int64Builder::new()),
            ColumnType::Float => Builder::Float(Float64Builder::new()),
            ColumnType::Boolean => Builder::Bool(BooleanBuilder::new()),
            ColumnType::String => Builder::Str(StringBuilder::new()),
        };
        Self {
            name,
            column_type,
            builder,
            stats: Stats::default(),
        }
    }

    pub fn null(&mut self) {
        self.stats.nulls += 1;
        match &mut self.builder {
            Builder::Int(b) => b.append_null(),
            Builder::Float(b) => b.append_null(),
            Builder::Bool(b) => b.append_null(),
            Builder::Str(b) => b.append_null(),
        }
    }

    pub fn int(&mut self, value: i64) {
        #[allow(clippy::cast_precision_loss)]
        self.stats.number(value as f64);
        self.stats.distinct(value);
        if let Builder::Int(b) = &mut self.builder {
            b.append_value(value);
        }
    }

    pub fn float(&mut self, value: f64) {
        self.stats.number(value);
        self.stats.distinct(value.to_bits());
        if let Builder::Float(b) = &mut self.builder {
            b.append_value(value);
        }
    }

    pub fn boolean(&mut self, value: bool) {
        self.stats.number(f64::from(u8::from(value)));
        self.stats.distinct(value);
        self.stats.category(if value { "true" } else { "false" });
        if let Builder::Bool(b) = &mut self.builder {
            b.append_value(value);
        }
    }

    pub fn string(&mut self, value: &str) {
        self.stats.count += 1;
        self.stats.distinct(value);
        self.stats.category(value);
        if let Builder::Str(b) = &mut self.builder {
            b.append_value(value);
        }
    }

    /// A text cell (CSV), trimmed, not a null token; false (and nothing appended) when it
    /// does not fit the column's type.
    pub fn try_text(&mut self, raw: &str, trimmed: &str) -> bool {
        match self.column_type {
            ColumnType::Integer => match trimmed.parse() {
                Ok(v) => self.int(v),
                Err(_) => return false,
            },
            ColumnType::Float => match parse_float(trimmed) {
                Some(v) => self.float(v),
                None => return false,
            },
            ColumnType::Boolean => match parse_bool(trimmed) {
                Some(v) => self.boolean(v),
                None => return false,
            },
            ColumnType::String => self.string(raw),
        }
        true
    }

    /// Like [`Self::try_text`], with an error naming the value and its line.
    pub fn text(&mut self, raw: &str, trimmed: &str, line: u64) -> Result<(), IngestError> {
        if self.try_text(raw, trimmed) {
            return Ok(());
        }
        Err(self.mismatch(trimmed, line))
    }

    /// The error for a value that does not fit this column's type.
    pub fn mismatch(&self, value: &str, line: u64) -> IngestError {
        IngestError::Invalid(format!(
            "line {line}: value {value:?} in column {:?} is not {}",
            self.name,
            article(self.column_type)
        ))
    }

    /// A typed cell (JSON lines).
    pub fn json(&mut self, value: &serde_json::Value, line: u64) -> Result<(), IngestError> {
        use serde_json::Value;
        let bad = || {
            IngestError::Invalid(format!(
                "line {line}: value {value} in column {:?} is not {}",
                self.name,
                article(self.column_type)
            ))
        };
        match (self.column_type, value) {
            (_, Value::Null) => self.null(),
            (ColumnType::Integer, Value::Number(n)) => self.int(n.as_i64().ok_or_else(bad)?),
            (ColumnType::Float, Value::Number(n)) => {
                self.float(n.as_f64().filter(|v| v.is_finite()).ok_or_else(bad)?);
            }
            (ColumnType::Boolean, Value::Bool(b)) => self.boolean(*b),
            (ColumnType::String, Value::String(s)) => self.string(s),
            (ColumnType::String, Value::Number(n)) => self.string(&n.to_string()),
            (ColumnType::String, Value::Bool(b)) => self.string(if *b { "true" } else { "false" }),
            // Typed text in JSON, for an explicit override ("7" as integer).
            (ty, Value::String(s)) if Inference::fits(ty, s.trim()) => {
                self.text(s, s.trim(), line)?;
            }
            _ => return Err(bad()),
        }
        Ok(())
    }

    /// The values appended since the last call, as one Arrow array.
    pub fn finish_batch(&mut self) -> ArrayRef {
        match &mut self.builder {
            Builder::Int(b) => Arc::new(b.finish()),
            Builder::Float(b) => Arc::new(b.finish()),
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Str(b) => Arc::new(b.finish()),
        }
    }

    pub fn stats(&self) -> ColumnStats {
        self.stats.finish(self.column_type != ColumnType::String)
    }
}

fn article(column_type: ColumnType) -> &'static str {
    match column_type {
        ColumnType::Integer => "an integer",
        ColumnType::Float => "a finite float",
        ColumnType::Boolean => "a boolean (true/false)",
        ColumnType::String => "a string",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inference_prefers_the_narrowest_type() {
        let infer = |cells: &[&str]| {
            let mut inference = Inference::default();
            for c in cells {
                inference.text(c);
            }
            inference.resolve()
        };
        assert_eq!(infer(&["1", "2", "-3"]), ColumnType::Integer);
        assert_eq!(infer(&["1", "2.5"]), ColumnType::Float);
        assert_eq!(infer(&["true", "FALSE"]), ColumnType::Boolean);
        assert_eq!(infer(&["1", "x"]), ColumnType::String);
        assert_eq!(infer(&["1", "inf"]), ColumnType::String);
        assert_eq!(infer(&[]), ColumnType::String);
    }

    #[test]
    fn float_parsing_accepts_exactly_what_std_accepts() {
        let cases = [
            "1.5",
            "1.5x",
            " 1.5",
            "1.5 ",
            "",
            "-",
            "+",
            ".",
            "1e5",
            "1E-3",
            "1e",
            "e5",
            "nan",
            "NaN",
            "inf",
            "-infinity",
            "+3",
            ".5",
            "5.",
            "-.5",
            "0x10",
            "1_000",
            "1,5",
            "١",
            "--1",
            "1.7976931348623157e308",
            "1e309",
            "4.9e-324",
            "0.1",
            "123456789012345678901234567890",
        ];
        for case in cases {
            let std = case.parse::<f64>().ok().filter(|v| v.is_finite());
            assert_eq!(parse_float(case), std, "{case:?}");
        }
    }

    #[test]
    fn statistics_match_a_direct_computation() {
        let mut column = ColumnBuilder::new("x".into(), ColumnType::Float);
        for v in [1.0, 2.0, 3.0, 4.0] {
            column.float(v);
        }
        column.null();
        let stats = column.stats();
        assert_eq!((stats.count, stats.nulls, stats.distinct), (4, 1, 4));
        assert_eq!(
            (stats.min, stats.max, stats.mean),
            (Some(1.0), Some(4.0), Some(2.5))
        );
        assert!((stats.std.unwrap() - 1.118_033_988_749_895).abs() < 1e-12);

        let mut column = ColumnBuilder::new("c".into(), ColumnType::String);
        for v in ["a", "b", "a", "c", "a", "b"] {
            column.string(v);
        }
        let stats = column.stats();
        assert_eq!(
            stats.top[0],
            TopValue {
                value: "a".into(),
                count: 3
            }
        );
        assert_eq!(
            stats.top[1],
            TopValue {
                value: "b".into(),
                count: 2
            }
        );
        assert_eq!(stats.mean, None);
    }
}
