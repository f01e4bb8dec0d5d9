//! Accounting: requests, rows and errors per key and model, counted in memory on the request
//! path and added to the store every `usage_flush_ms` (and at shutdown). A crash loses at most
//! that interval's counts; no request waits on a disk write for them.

use std::collections::HashMap;
use std::sync::Mutex;

use mlmesh_protocol::gateway::UsageRecord;

/// Calls about no model are counted under this name.
pub const NO_MODEL: &str = "-";

/// Counts per key, then per model. Nested so that a request finds its entry by `&str` without
/// building owned keys (two allocations per request otherwise).
type Pending = HashMap<
    Box<str>,
    HashMap<Box<str>, [u64; 3], foldhash::fast::RandomState>,
    foldhash::fast::RandomState,
>;

#[derive(Debug, Default)]
pub struct Counter {
    pending: Mutex<Pending>,
}

impl Counter {
    pub fn count(&self, key: &str, model: &str, rows: u64, error: bool) {
        self.add(key, model, [1, rows, u64::from(error)]);
    }

    fn add(&self, key: &str, model: &str, counts: [u64; 3]) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let models = match pending.get_mut(key) {
            Some(m) => m,
            None => pending.entry(key.into()).or_default(),
        };
        let c = match models.get_mut(model) {
            Some(c) => c,
            None => models.entry(model.into()).or_default(),
        };
        for (total, n) in c.iter_mut().zip(counts) {
            *total += n;
        }
    }

    /// Takes the counts not yet stored.
    pub fn take(&self) -> Vec<UsageRecord> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        pending
            .into_iter()
            .flat_map(|(key, models)| {
                models
                    .into_iter()
                    .map(move |(model, c)| record(key.to_string(), model.into(), c))
            })
            .collect()
    }

    /// Puts back counts whose write failed.
    pub fn restore(&self, records: Vec<UsageRecord>) {
        for r in records {
            self.add(&r.key, &r.model, [r.requests, r.rows, r.errors]);
        }
    }

    /// Stored counts plus those not yet stored.
    pub fn merged(&self, stored: Vec<UsageRecord>) -> Vec<UsageRecord> {
        let mut all: HashMap<(String, String), [u64; 3]> = HashMap::new();
        for r in stored {
            let c = all.entry((r.key, r.model)).or_default();
            c[0] += r.requests;
            c[1] += r.rows;
            c[2] += r.errors;
        }
        for (key, models) in self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            for (model, p) in models {
                let c = all.entry((key.to_string(), model.to_string())).or_default();
                for i in 0..3 {
                    c[i] += p[i];
                }
            }
        }
        let mut out: Vec<UsageRecord> =
            all.into_iter().map(|((k, m), c)| record(k, m, c)).collect();
        out.sort_by(|a, b| (&a.key, &a.model).cmp(&(&b.key, &b.model)));
        out
    }
}

fn record(key: String, model: String, c: [u64; 3]) -> UsageRecord {
    UsageRecord {
        key,
        model,
        requests: c[0],
        rows: c[1],
        errors: c[2],
    }
}
