//! The autoscaler's journal: scaling decisions, anomaly events and abuse actions, kept in its
//! store (with the same retention as the per-minute series) so that a restart keeps them.
//!
//! They go to the store's event log (`mlmesh_events`, kind `decision`, `anomaly` or `abuse`,
//! subject the service or client). Events are raised by code holding the in-memory state's
//! locks, so they are sent over a channel and written by one task, in batches; the newest are
//! read back at start.

use mlmesh_store::{Store, StoreError, now_ms};
use rusqlite::params;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What is journalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Decision,
    Anomaly,
    Abuse,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Decision => "decision",
            Self::Anomaly => "anomaly",
            Self::Abuse => "abuse",
        }
    }
}

type Entry = (Kind, String, serde_json::Value);

/// Sends events to the writer; cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct Journal {
    tx: mpsc::UnboundedSender<Entry>,
}

impl Journal {
    /// Starts the writer on `store`; it deletes events older than `retention_ms` as it goes and
    /// stops (after writing what it has) when `cancel` fires.
    pub fn spawn(store: Store, retention_ms: i64, cancel: CancellationToken) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(store, rx, retention_ms, cancel));
        Self { tx }
    }

    /// Records `event` about `subject` (a service, or a client).
    pub fn record(&self, kind: Kind, subject: &str, event: &impl Serialize) {
        match serde_json::to_value(event) {
            Ok(body) => {
                // The writer only stops at shutdown, when a lost event no longer matters.
                let _ = self.tx.send((kind, subject.to_string(), body));
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode a journal event"),
        }
    }
}

async fn write_loop(
    store: Store,
    mut rx: mpsc::UnboundedReceiver<Entry>,
    retention_ms: i64,
    cancel: CancellationToken,
) {
    let mut batch = Vec::new();
    loop {
        let received = tokio::select! {
            n = rx.recv_many(&mut batch, 256) => n,
            () = cancel.cancelled() => {
                while let Ok(entry) = rx.try_recv() {
                    batch.push(entry);
                }
                0
            }
        };
        if !batch.is_empty() {
            let entries = std::mem::take(&mut batch);
            let count = entries.len();
            if let Err(e) = write(&store, entries, retention_ms).await {
                tracing::warn!(error = %e, events = count, "cannot journal events");
            }
        }
        if received == 0 {
            return;
        }
    }
}

async fn write(store: &Store, entries: Vec<Entry>, retention_ms: i64) -> Result<(), StoreError> {
    store
        .write(move |tx| {
            for (kind, subject, body) in &entries {
                tx.event(kind.name(), subject, body)?;
            }
            tx.execute(
                "DELETE FROM mlmesh_events WHERE at_ms < ?1",
                params![now_ms() - retention_ms],
            )?;
            Ok(())
        })
        .await
}

/// The newest `limit` events of `kind`, oldest first (events that no longer decode, say after
/// a field changed, are skipped).
pub async fn newest<T: DeserializeOwned + Send + 'static>(
    store: &Store,
    kind: Kind,
    limit: usize,
) -> Result<Vec<T>, StoreError> {
    store
        .read(move |db| {
            let mut statement = db.prepare(
                "SELECT payload FROM (SELECT id, payload FROM mlmesh_events WHERE kind = ?1
                 ORDER BY id DESC LIMIT ?2) ORDER BY id",
            )?;
            let rows = statement.query_map(
                params![kind.name(), i64::try_from(limit).unwrap_or(i64::MAX)],
                |row| row.get::<_, String>(0),
            )?;
            let mut events = Vec::new();
            for body in rows {
                if let Ok(event) = serde_json::from_str(&body?) {
                    events.push(event);
                }
            }
            Ok(events)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_are_read_back_newest_last_per_kind_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("a.db"), &[]).unwrap();
        let cancel = CancellationToken::new();
        let journal = Journal::spawn(store.clone(), 60_000, cancel.clone());
        for i in 0..5 {
            journal.record(
                Kind::Decision,
                "model-trees",
                &serde_json::json!({ "n": i }),
            );
        }
        journal.record(Kind::Anomaly, "gateway", &serde_json::json!({ "n": 99 }));
        // The writer drains what was sent before it stops.
        cancel.cancel();
        let stored = || async {
            newest::<serde_json::Value>(&store, Kind::Decision, 3)
                .await
                .unwrap()
        };
        let mut decisions = stored().await;
        for _ in 0..200 {
            if decisions.len() == 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            decisions = stored().await;
        }
        let n: Vec<_> = decisions.iter().map(|d| d["n"].as_i64().unwrap()).collect();
        assert_eq!(n, [2, 3, 4]);
        let anomalies: Vec<serde_json::Value> = newest(&store, Kind::Anomaly, 10).await.unwrap();
        assert_eq!(anomalies.len(), 1);
        assert!(
            newest::<serde_json::Value>(&store, Kind::Abuse, 10)
                .await
                .unwrap()
                .is_empty()
        );

        // Past the retention, the next write removes them.
        store
            .write(|tx| {
                tx.execute("UPDATE mlmesh_events SET at_ms = at_ms - 120000", [])?;
                Ok(())
            })
            .await
            .unwrap();
        write(
            &store,
            vec![(Kind::Abuse, "key:k".into(), serde_json::json!({}))],
            60_000,
        )
        .await
        .unwrap();
        assert!(
            newest::<serde_json::Value>(&store, Kind::Decision, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            newest::<serde_json::Value>(&store, Kind::Abuse, 10)
                .await
                .unwrap()
                .len(),
            1
        );
    }
}
