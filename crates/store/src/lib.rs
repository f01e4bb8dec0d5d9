//! The embedded store of a stateful service: one SQLite database under the service's data
//! directory, shared by its replicas.
//!
//! - WAL mode with `synchronous = FULL`: a committed write survives `kill -9` (and power loss),
//!   and readers never wait for a writer.
//! - [`Store::write`] runs a closure in one `IMMEDIATE` transaction on the blocking pool; events
//!   appended through [`Tx::event`] commit atomically with the change they describe (the outbox
//!   pattern), so a follower never misses one nor sees one for a change that did not happen.
//! - [`Store::events_after`] is the long-poll read of that log.
//! - Migrations are numbered SQL scripts applied once each, tracked by `PRAGMA user_version`.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the blocking pool failed: {0}")]
    Join(String),
    /// A domain rule the closure enforces inside the transaction (rolled back).
    #[error("{0}")]
    Rejected(String),
}

pub use mlmesh_protocol::Event;

const EVENTS_TABLE: &str = "CREATE TABLE IF NOT EXISTS mlmesh_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    payload TEXT NOT NULL,
    at_ms INTEGER NOT NULL
)";

#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
    writer: Arc<Mutex<Connection>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    last_event: watch::Sender<i64>,
}

/// A write transaction; dereferences to rusqlite's transaction.
#[derive(Debug)]
pub struct Tx<'a> {
    tx: rusqlite::Transaction<'a>,
    last_event: Option<i64>,
}

impl Deref for Tx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.tx
    }
}

impl Tx<'_> {
    /// Appends an event that commits (or rolls back) with this transaction.
    pub fn event(
        &mut self,
        kind: &str,
        subject: &str,
        payload: &serde_json::Value,
    ) -> Result<i64, StoreError> {
        self.tx.execute(
            "INSERT INTO mlmesh_events (kind, subject, payload, at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![kind, subject, serde_json::to_string(payload)?, now_ms()],
        )?;
        let id = self.tx.last_insert_rowid();
        self.last_event = Some(id);
        Ok(id)
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Store {
    /// Opens (creating if needed) the database at `path` and applies the `migrations` not yet
    /// applied, in order. Call once at start-up, before serving.
    pub fn open(path: &Path, migrations: &[&str]) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Rejected(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let mut writer = connect(path)?;
        writer.execute_batch(EVENTS_TABLE)?;
        let applied: i64 = writer.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let applied = usize::try_from(applied).unwrap_or(0);
        for (index, migration) in migrations.iter().enumerate().skip(applied) {
            let tx = writer.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(migration)?;
            tx.execute_batch(&format!("PRAGMA user_version = {}", index + 1))?;
            tx.commit()?;
        }
        let last: i64 =
            writer.query_row("SELECT COALESCE(MAX(id), 0) FROM mlmesh_events", [], |r| {
                r.get(0)
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            writer: Arc::new(Mutex::new(writer)),
            readers: Arc::new(Mutex::new(Vec::new())),
            last_event: watch::channel(last).0,
        })
    }

    /// Runs `work` in one IMMEDIATE transaction on the blocking pool and commits it; an error
    /// rolls everything back. Returns once the commit is durable.
    pub async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let writer = Arc::clone(&self.writer);
        let (value, last_event) = tokio::task::spawn_blocking(move || {
            let mut conn = writer.lock().unwrap_or_else(|e| e.into_inner());
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut tx = Tx {
                tx,
                last_event: None,
            };
            let value = work(&mut tx)?;
            let last_event = tx.last_event;
            tx.tx.commit()?;
            Ok::<_, StoreError>((value, last_event))
        })
        .await
        .map_err(|e| StoreError::Join(e.to_string()))??;
        if let Some(id) = last_event {
            self.last_event.send_if_modified(|last| {
                let newer = id > *last;
                if newer {
                    *last = id;
                }
                newer
            });
        }
        Ok(value)
    }

    /// Runs `work` on a read connection (WAL: never waits for a writer).
    pub async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = Arc::clone(&self.readers);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let conn = match pooled {
                Some(conn) => conn,
                None => connect(&path)?,
            };
            let result = work(&conn);
            readers.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Join(e.to_string()))?
    }

    /// Events with `id > after`, at most `limit`; waits up to `wait` for one if there is none
    /// yet (long poll).
    pub async fn events_after(
        &self,
        after: i64,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<Event>, StoreError> {
        let mut changes = self.last_event.subscribe();
        if *changes.borrow_and_update() <= after {
            let _ = tokio::time::timeout(wait, changes.changed()).await;
        }
        // Always read the database: a replica sharing the file may have written events that
        // did not wake this process.
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT id, kind, subject, payload, at_ms FROM mlmesh_events
                 WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = statement.query_map(params![after, limit], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, i64>(4)?,
                ))
            })?;
            let mut events = Vec::new();
            for row in rows {
                let (id, kind, subject, payload, at_ms) = row?;
                events.push(Event {
                    id,
                    kind,
                    subject,
                    payload: serde_json::from_str(&payload)?,
                    at_ms,
                });
            }
            Ok(events)
        })
        .await
    }
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // FULL: the commit is on disk before we acknowledge it (WAL + NORMAL survives a process
    // kill but not a power cut). busy_timeout: replicas sharing the file take turns.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;",
    )?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIGRATIONS: &[&str] = &[
        "CREATE TABLE items (name TEXT PRIMARY KEY)",
        "ALTER TABLE items ADD COLUMN size INTEGER NOT NULL DEFAULT 0",
    ];

    #[tokio::test]
    async fn migrations_apply_once_and_writes_commit_with_their_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let store = Store::open(&path, MIGRATIONS).unwrap();
        store
            .write(|tx| {
                tx.execute("INSERT INTO items (name, size) VALUES ('a', 1)", [])?;
                tx.event("item.added", "a", &serde_json::json!({"size": 1}))?;
                Ok(())
            })
            .await
            .unwrap();
        // A failing write rolls back its rows and its event.
        let failed = store
            .write(|tx| {
                tx.execute("INSERT INTO items (name) VALUES ('b')", [])?;
                tx.event("item.added", "b", &serde_json::json!({}))?;
                Err::<(), _>(StoreError::Rejected("no".into()))
            })
            .await;
        assert!(failed.is_err());
        drop(store);

        let store = Store::open(&path, MIGRATIONS).unwrap();
        let names: Vec<String> = store
            .read(|c| {
                let mut s = c.prepare("SELECT name FROM items")?;
                let names = s.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
                Ok(names)
            })
            .await
            .unwrap();
        assert_eq!(names, vec!["a".to_string()]);
        let events = store.events_after(0, 10, Duration::ZERO).await.unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!((events[0].id, events[0].subject.as_str()), (1, "a"));
    }

    #[tokio::test(start_paused = true)]
    async fn events_long_poll_wakes_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db"), MIGRATIONS).unwrap();
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move { store.events_after(0, 10, Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let start = tokio::time::Instant::now();
        store
            .write(|tx| {
                tx.event("x", "s", &serde_json::json!(null))?;
                Ok(())
            })
            .await
            .unwrap();
        let events = waiter.await.unwrap().unwrap();
        assert_eq!(events.len(), 1);
        assert!(start.elapsed() < Duration::from_secs(1));
        // Nothing new: the wait runs out and answers empty.
        let events = store
            .events_after(1, 10, Duration::from_secs(2))
            .await
            .unwrap();
        assert!(events.is_empty());
    }
}
