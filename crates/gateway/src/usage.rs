//! Accounting: requests, rows and errors per key and model, counted in memory on the request
//! path and added to the store every `usage_flush_ms` (and at shutdown). A crash loses at most
//! that interval's counts; no request waits on a disk write for them.

use std::collections::HashMap;
use std::sync::Mutex;

use mlmesh_protocol::gateway::UsageRecord;

/// Calls about no model are counted under this name.
pub const NO_MODEL: &str = "-";

#[derive(Debug, Default)]
pub struct Counter {
    pending: Mutex<HashMap<(String, String), [u64; 3]>>,
}

impl Counter {
    pub fn count(&self, key: &str, model: &str, rows: u64, error: bool) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let c = match pending.get_mut(&(key.to_string(), model.to_string())) {
            Some(c) => c,
            None => pending
                .entry((key.to_string(), model.to_string()))
                .or_default(),
        };
        c[0] += 1;
        c[1] += rows;
        c[2] += u64::from(error);
    }

    /// Takes the counts not yet stored.
    pub fn take(&self) -> Vec<UsageRecord> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        pending
            .into_iter()
            .map(|((key, model), c)| record(key, model, c))
            .collect()
    }

    /// Puts back counts whose write failed.
    pub fn restore(&self, records: Vec<UsageRecord>) {
        for r in records {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let c = pending.entry((r.key, r.model)).or_default();
            c[0] += r.requests;
            c[1] += r.rows;
            c[2] += r.errors;
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
        for ((key, model), p) in self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let c = all.entry((key.clone(), model.clone())).or_default();
            for i in 0..3 {
                c[i] += p[i];
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
