//! Where a prediction runs. Handing work to the blocking pool costs two cross-thread wake-ups
//! (measured at ~2.2 context switches and tens of µs of CPU per request), which is far more
//! than a small prediction itself: a 100-tree forest answers one row in ~2 µs. So predictions
//! that the model's own measured cost says are short run inline on the async worker, and
//! anything longer, or not measured yet, goes to the blocking pool as before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A model version's prediction cost per row: an exponentially weighted mean of what calls
/// took, shared by every request to the version.
#[derive(Debug, Default)]
pub struct Cost {
    /// Nanoseconds per row as `f64` bits; 0 while nothing is measured.
    ns_per_row: AtomicU64,
}

/// Weight of the newest measurement.
const ALPHA: f64 = 0.3;

impl Cost {
    /// Whether a prediction of `rows` rows is expected to take at most `budget` (tokio's
    /// guidance for time between two awaits is 10–100 µs). Unmeasured models never are: their
    /// first call, typically also the slowest (caches cold), measures.
    pub fn inline(&self, rows: u64, budget: Duration) -> bool {
        let bits = self.ns_per_row.load(Ordering::Relaxed);
        if bits == 0 {
            return false;
        }
        let expected = f64::from_bits(bits) * rows.max(1) as f64;
        expected <= budget.as_nanos() as f64
    }

    /// Takes in a call of `rows` rows that took `took`. Races between concurrent calls lose
    /// an update at worst, which a mean of many calls does not notice.
    pub fn record(&self, rows: u64, took: Duration) {
        let sample = took.as_nanos() as f64 / rows.max(1) as f64;
        let bits = self.ns_per_row.load(Ordering::Relaxed);
        let mean = if bits == 0 {
            sample
        } else {
            let old = f64::from_bits(bits);
            old + ALPHA * (sample - old)
        };
        // A measured 0 would read as "unmeasured": keep the smallest positive cost instead.
        self.ns_per_row
            .store(mean.max(f64::MIN_POSITIVE).to_bits(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Duration = Duration::from_micros(50);

    #[test]
    fn unmeasured_models_go_to_the_pool() {
        assert!(!Cost::default().inline(1, BUDGET));
    }

    #[test]
    fn a_zero_budget_never_runs_inline() {
        let cost = Cost::default();
        cost.record(1, Duration::from_nanos(1));
        assert!(!cost.inline(1, Duration::ZERO));
    }

    #[test]
    fn cheap_small_batches_run_inline_and_large_ones_do_not() {
        let cost = Cost::default();
        cost.record(1, Duration::from_micros(2));
        assert!(cost.inline(1, BUDGET));
        assert!(cost.inline(25, BUDGET));
        assert!(!cost.inline(26, BUDGET));
    }

    #[test]
    fn the_estimate_follows_the_model_when_it_gets_slower() {
        let cost = Cost::default();
        cost.record(1, Duration::from_micros(2));
        for _ in 0..20 {
            cost.record(10, Duration::from_millis(1));
        }
        assert!(!cost.inline(1, BUDGET), "100 µs per row is over the budget");
    }

    #[test]
    fn a_zero_duration_still_counts_as_measured() {
        let cost = Cost::default();
        cost.record(4, Duration::ZERO);
        assert!(cost.inline(1000, BUDGET));
    }
}
