//! The data service's tables: datasets and their immutable versions. Every change writes its
//! event in the same transaction (see `mlmesh-store`).

use mlmesh_protocol::data::{
    Column, ColumnInfo, DatasetDetail, DatasetSummary, UploadResponse, VersionInfo, VersionSummary,
};
use mlmesh_store::{StoreError, Tx, now_ms};
use rusqlite::{Connection, OptionalExtension, params};

pub const MIGRATIONS: &[&str] = &["
CREATE TABLE datasets (
    name TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL
);
CREATE TABLE versions (
    dataset TEXT NOT NULL REFERENCES datasets(name) ON DELETE CASCADE,
    version TEXT NOT NULL,
    number INTEGER NOT NULL,
    content_sha256 TEXT NOT NULL,
    rows INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    format TEXT NOT NULL,
    target TEXT,
    columns TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (dataset, version),
    UNIQUE (dataset, number)
);
"];

/// A version about to be recorded.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub version: String,
    pub content_sha256: String,
    pub rows: u64,
    pub bytes: u64,
    pub format: String,
    pub target: Option<String>,
    pub columns: Vec<ColumnInfo>,
}

const VERSION_COLUMNS: &str =
    "version, number, rows, bytes, content_sha256, format, target, columns, created_ms";

fn version_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(VersionInfo, String)> {
    let columns: String = row.get(7)?;
    Ok((
        VersionInfo {
            version: row.get(0)?,
            number: row.get(1)?,
            rows: row.get(2)?,
            bytes: row.get(3)?,
            content_sha256: row.get(4)?,
            format: row.get(5)?,
            target: row.get(6)?,
            columns: Vec::new(),
            created_ms: row.get(8)?,
        },
        columns,
    ))
}

fn decode((mut info, columns): (VersionInfo, String)) -> Result<VersionInfo, StoreError> {
    info.columns = serde_json::from_str(&columns)?;
    Ok(info)
}

/// Content addresses are exactly this many hex digits (see `routes::content_address`).
pub const ADDRESS_LEN: usize = 16;

/// `which` as a version number: digits, shorter than a content address (an address can be all
/// decimal digits, and must still be found as an address).
fn version_number(which: &str) -> Option<u64> {
    (which.len() < ADDRESS_LEN)
        .then(|| which.parse().ok())
        .flatten()
}

/// A version by content address, by number (`3`), or `latest`.
pub fn version(
    conn: &Connection,
    name: &str,
    which: &str,
) -> Result<Option<VersionInfo>, StoreError> {
    let select = format!("SELECT {VERSION_COLUMNS} FROM versions WHERE dataset = ?1");
    let found = if which == "latest" {
        let sql = format!("{select} ORDER BY number DESC LIMIT 1");
        conn.query_row(&sql, params![name], version_row)
    } else if let Some(number) = version_number(which) {
        conn.query_row(
            &format!("{select} AND number = ?2"),
            params![name, number],
            version_row,
        )
    } else {
        conn.query_row(
            &format!("{select} AND version = ?2"),
            params![name, which],
            version_row,
        )
    };
    found.optional()?.map(decode).transpose()
}

pub fn upload_response(name: &str, info: &VersionInfo, created: bool) -> UploadResponse {
    UploadResponse {
        name: name.to_string(),
        version: info.version.clone(),
        number: info.number,
        rows: info.rows,
        columns: info
            .columns
            .iter()
            .map(|c| Column {
                name: c.name.clone(),
                column_type: c.column_type,
            })
            .collect(),
        target: info.target.clone(),
        created,
    }
}

/// Records a version (and the dataset, on its first version) with their events. Identical
/// content recorded meanwhile by a concurrent upload is returned as it is.
pub fn insert_version(
    tx: &mut Tx<'_>,
    name: &str,
    new: NewVersion,
) -> Result<(VersionInfo, bool), StoreError> {
    if let Some(existing) = version(tx, name, &new.version)? {
        return Ok((existing, false));
    }
    let now = now_ms();
    let created_dataset = tx.execute(
        "INSERT OR IGNORE INTO datasets (name, created_ms) VALUES (?1, ?2)",
        params![name, now],
    )? == 1;
    let number: u64 = tx.query_row(
        "SELECT COALESCE(MAX(number), 0) + 1 FROM versions WHERE dataset = ?1",
        params![name],
        |r| r.get(0),
    )?;
    tx.execute(
        "INSERT INTO versions (dataset, version, number, content_sha256, rows, bytes, format, target, columns, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            name,
            new.version,
            number,
            new.content_sha256,
            new.rows,
            new.bytes,
            new.format,
            new.target,
            serde_json::to_string(&new.columns)?,
            now
        ],
    )?;
    if created_dataset {
        tx.event("dataset.created", name, &serde_json::json!({"name": name}))?;
    }
    tx.event(
        "dataset.version_added",
        name,
        &serde_json::json!({"name": name, "version": new.version, "number": number, "rows": new.rows}),
    )?;
    let info = VersionInfo {
        version: new.version,
        number,
        rows: new.rows,
        bytes: new.bytes,
        content_sha256: new.content_sha256,
        format: new.format,
        target: new.target,
        columns: new.columns,
        created_ms: now,
    };
    Ok((info, true))
}

pub fn list(conn: &Connection) -> Result<Vec<DatasetSummary>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT d.name, d.created_ms,
                (SELECT COUNT(*) FROM versions WHERE dataset = d.name),
                v.version, v.rows, v.columns, v.target
         FROM datasets d JOIN versions v ON v.dataset = d.name
         WHERE v.number = (SELECT MAX(number) FROM versions WHERE dataset = d.name)
         ORDER BY d.name",
    )?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, u64>(2)?,
            row.get::<_, String>(3)?,
            row.get::<_, u64>(4)?,
            row.get::<_, String>(5)?,
            row.get::<_, Option<String>>(6)?,
        ))
    })?;
    let mut datasets = Vec::new();
    for row in rows {
        let (name, created_ms, versions, latest_version, rows, columns, target) = row?;
        let columns: Vec<ColumnInfo> = serde_json::from_str(&columns)?;
        datasets.push(DatasetSummary {
            name,
            versions,
            latest_version,
            rows,
            columns: columns.len() as u64,
            target,
            created_ms,
        });
    }
    Ok(datasets)
}

pub fn detail(conn: &Connection, name: &str) -> Result<Option<DatasetDetail>, StoreError> {
    let created_ms: Option<i64> = conn
        .query_row(
            "SELECT created_ms FROM datasets WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )
        .optional()?;
    let (Some(created_ms), Some(latest)) = (created_ms, version(conn, name, "latest")?) else {
        return Ok(None);
    };
    let mut statement = conn.prepare_cached(
        "SELECT version, number, rows, created_ms FROM versions WHERE dataset = ?1 ORDER BY number DESC",
    )?;
    let versions = statement
        .query_map(params![name], |r| {
            Ok(VersionSummary {
                version: r.get(0)?,
                number: r.get(1)?,
                rows: r.get(2)?,
                created_ms: r.get(3)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Some(DatasetDetail {
        name: name.to_string(),
        created_ms,
        latest,
        versions,
    }))
}

/// Deletes a dataset and its versions, with a `dataset.deleted` event; false if unknown.
pub fn delete(tx: &mut Tx<'_>, name: &str) -> Result<bool, StoreError> {
    tx.execute("DELETE FROM versions WHERE dataset = ?1", params![name])?;
    if tx.execute("DELETE FROM datasets WHERE name = ?1", params![name])? == 0 {
        return Ok(false);
    }
    tx.event("dataset.deleted", name, &serde_json::json!({"name": name}))?;
    Ok(true)
}

/// Every (dataset, version) recorded, for the start-up sweep of unreferenced files.
pub fn all_versions(conn: &Connection) -> Result<Vec<(String, String)>, StoreError> {
    let mut statement = conn.prepare("SELECT dataset, version FROM versions")?;
    let rows = statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_all_digit_content_address_is_not_a_number() {
        assert_eq!(version_number("3"), Some(3));
        assert_eq!(version_number("1234567890123456"), None);
        assert_eq!(version_number("latest"), None);
        assert_eq!(version_number("3a"), None);
    }
}
