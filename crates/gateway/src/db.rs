//! The gateway's own tables: API keys (hashes only), ensemble definitions, usage counts.

use mlmesh_protocol::gateway::{Ensemble, KeyInfo, Role, UsageRecord};
use mlmesh_store::{StoreError, Tx};
use rusqlite::{Connection, OptionalExtension, params};

pub const MIGRATIONS: &[&str] = &["
CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    role TEXT NOT NULL,
    rate_per_s INTEGER,
    name TEXT,
    created_ms INTEGER NOT NULL
);
CREATE TABLE ensembles (
    name TEXT PRIMARY KEY,
    definition TEXT NOT NULL
);
CREATE TABLE usage (
    key TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    PRIMARY KEY (key, model)
);
"];

fn role_text(role: Role) -> &'static str {
    match role {
        Role::Admin => "admin",
        Role::Train => "train",
        Role::Predict => "predict",
    }
}

fn parse_role(text: &str) -> Role {
    match text {
        "admin" => Role::Admin,
        "train" => Role::Train,
        _ => Role::Predict,
    }
}

/// A stored key: its listing and its hash.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub info: KeyInfo,
    pub hash: Vec<u8>,
}

pub fn keys(c: &Connection) -> Result<Vec<StoredKey>, StoreError> {
    let mut stmt = c.prepare(
        "SELECT id, hash, role, rate_per_s, name, created_ms FROM keys ORDER BY created_ms, id",
    )?;
    let rows = stmt.query_map([], |r| {
        let role: String = r.get(2)?;
        let rate: Option<i64> = r.get(3)?;
        Ok(StoredKey {
            hash: r.get(1)?,
            info: KeyInfo {
                id: r.get(0)?,
                role: parse_role(&role),
                rate_per_s: rate.and_then(|v| u32::try_from(v).ok()),
                name: r.get(4)?,
                created_ms: r.get(5)?,
            },
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Inserts a key, or (same id) replaces its hash, as `admin.key` changes.
pub fn put_key(tx: &mut Tx<'_>, key: &StoredKey) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO keys (id, hash, role, rate_per_s, name, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(id) DO UPDATE SET hash = excluded.hash, role = excluded.role",
        params![
            key.info.id,
            key.hash,
            role_text(key.info.role),
            key.info.rate_per_s.map(i64::from),
            key.info.name,
            key.info.created_ms
        ],
    )?;
    Ok(())
}

pub fn delete_key(tx: &mut Tx<'_>, id: &str) -> Result<bool, StoreError> {
    Ok(tx.execute("DELETE FROM keys WHERE id = ?1", params![id])? > 0)
}

pub fn ensembles(c: &Connection) -> Result<Vec<Ensemble>, StoreError> {
    let mut stmt = c.prepare("SELECT definition FROM ensembles ORDER BY name")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for text in rows {
        let text = text?;
        out.push(
            serde_json::from_str(&text).map_err(|e| {
                StoreError::Rejected(format!("a stored ensemble is unreadable: {e}"))
            })?,
        );
    }
    Ok(out)
}

/// Stores an ensemble; returns whether it replaced one.
pub fn put_ensemble(tx: &mut Tx<'_>, ensemble: &Ensemble) -> Result<bool, StoreError> {
    let existed: Option<i64> = tx
        .query_row(
            "SELECT 1 FROM ensembles WHERE name = ?1",
            params![ensemble.name],
            |r| r.get(0),
        )
        .optional()?;
    let text = serde_json::to_string(ensemble).map_err(|e| StoreError::Rejected(e.to_string()))?;
    tx.execute(
        "INSERT INTO ensembles (name, definition) VALUES (?1, ?2)
         ON CONFLICT(name) DO UPDATE SET definition = excluded.definition",
        params![ensemble.name, text],
    )?;
    Ok(existed.is_some())
}

pub fn delete_ensemble(tx: &mut Tx<'_>, name: &str) -> Result<bool, StoreError> {
    Ok(tx.execute("DELETE FROM ensembles WHERE name = ?1", params![name])? > 0)
}

pub fn add_usage(tx: &mut Tx<'_>, records: &[UsageRecord]) -> Result<(), StoreError> {
    for r in records {
        tx.execute(
            "INSERT INTO usage (key, model, requests, rows, errors) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(key, model) DO UPDATE SET requests = requests + excluded.requests,
                 rows = rows + excluded.rows, errors = errors + excluded.errors",
            params![
                r.key,
                r.model,
                r.requests as i64,
                r.rows as i64,
                r.errors as i64
            ],
        )?;
    }
    Ok(())
}

pub fn usage(c: &Connection) -> Result<Vec<UsageRecord>, StoreError> {
    let mut stmt =
        c.prepare("SELECT key, model, requests, rows, errors FROM usage ORDER BY key, model")?;
    let rows = stmt.query_map([], |r| {
        Ok(UsageRecord {
            key: r.get(0)?,
            model: r.get(1)?,
            requests: r.get::<_, i64>(2)? as u64,
            rows: r.get::<_, i64>(3)? as u64,
            errors: r.get::<_, i64>(4)? as u64,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
