//! Tables of a model service: models, their immutable versions (metadata and artifact in one
//! row, so a version is either wholly there or not at all), and training jobs.

use mlmesh_protocol::model::{Job, JobState, ModelSummary, ModelVersion};
use mlmesh_store::{StoreError, Tx};
use rusqlite::{Connection, OptionalExtension, params};

pub const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE models (
    name TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL
);
CREATE TABLE versions (
    model TEXT NOT NULL REFERENCES models(name),
    version INTEGER NOT NULL,
    info TEXT NOT NULL,
    artifact BLOB NOT NULL,
    PRIMARY KEY (model, version)
);
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    info TEXT NOT NULL,
    state TEXT NOT NULL,
    owner TEXT NOT NULL,
    heartbeat_ms INTEGER NOT NULL,
    cancel INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL
);
CREATE INDEX jobs_by_state ON jobs (state);
",
    "
CREATE TABLE oof (
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    rows TEXT NOT NULL,
    columns INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (model, version)
);
",
];

fn json_error(e: serde_json::Error) -> StoreError {
    StoreError::Rejected(format!("stored JSON is unreadable: {e}"))
}

/// Adds a version numbered one past the model's latest; returns the number.
pub fn insert_version(
    tx: &mut Tx<'_>,
    mut info: ModelVersion,
    artifact: &[u8],
) -> Result<ModelVersion, StoreError> {
    tx.execute(
        "INSERT OR IGNORE INTO models (name, created_ms) VALUES (?1, ?2)",
        params![info.model, info.created_ms],
    )?;
    let latest: Option<i64> = tx.query_row(
        "SELECT MAX(version) FROM versions WHERE model = ?1",
        params![info.model],
        |r| r.get(0),
    )?;
    info.version = u64::try_from(latest.unwrap_or(0) + 1).unwrap_or(1);
    info.artifact_bytes = artifact.len() as u64;
    tx.execute(
        "INSERT INTO versions (model, version, info, artifact) VALUES (?1, ?2, ?3, ?4)",
        params![
            info.model,
            info.version as i64,
            serde_json::to_string(&info).map_err(json_error)?,
            artifact
        ],
    )?;
    tx.event(
        "model.version",
        &info.model,
        &serde_json::json!({"version": info.version, "algorithm": info.algorithm}),
    )?;
    Ok(info)
}

pub fn versions(conn: &Connection, model: &str) -> Result<Vec<ModelVersion>, StoreError> {
    let mut statement =
        conn.prepare_cached("SELECT info FROM versions WHERE model = ?1 ORDER BY version")?;
    let rows = statement.query_map(params![model], |r| r.get::<_, String>(0))?;
    rows.map(|r| serde_json::from_str(&r?).map_err(json_error))
        .collect()
}

/// `latest` or a number; `None` when there is no such version.
pub fn version(
    conn: &Connection,
    model: &str,
    which: &str,
) -> Result<Option<ModelVersion>, StoreError> {
    let info: Option<String> = if which == "latest" {
        conn.query_row(
            "SELECT info FROM versions WHERE model = ?1 ORDER BY version DESC LIMIT 1",
            params![model],
            |r| r.get(0),
        )
        .optional()?
    } else {
        let Ok(number) = which.parse::<i64>() else {
            return Ok(None);
        };
        conn.query_row(
            "SELECT info FROM versions WHERE model = ?1 AND version = ?2",
            params![model, number],
            |r| r.get(0),
        )
        .optional()?
    };
    info.map(|i| serde_json::from_str(&i).map_err(json_error))
        .transpose()
}

pub fn artifact(
    conn: &Connection,
    model: &str,
    version: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT artifact FROM versions WHERE model = ?1 AND version = ?2",
            params![model, version as i64],
            |r| r.get(0),
        )
        .optional()?)
}

/// Every model with its latest version, by name.
pub fn models(conn: &Connection, family: &str) -> Result<Vec<ModelSummary>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT m.name, m.created_ms, COUNT(v.version), MAX(v.version),
                (SELECT info FROM versions WHERE model = m.name ORDER BY version DESC LIMIT 1)
         FROM models m JOIN versions v ON v.model = m.name GROUP BY m.name ORDER BY m.name",
    )?;
    let rows = statement.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, String>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (name, created_ms, count, latest, info) = row?;
        let info: ModelVersion = serde_json::from_str(&info).map_err(json_error)?;
        out.push(ModelSummary {
            name,
            family: family.to_string(),
            latest_version: u64::try_from(latest).unwrap_or(0),
            versions: u64::try_from(count).unwrap_or(0),
            algorithm: info.algorithm,
            task: info.signature.task,
            created_ms,
        });
    }
    Ok(out)
}

/// `(model, latest version)` pairs: what replicas compare to notice new versions.
pub fn catalog(conn: &Connection) -> Result<Vec<(String, u64)>, StoreError> {
    let mut statement = conn
        .prepare_cached("SELECT model, MAX(version) FROM versions GROUP BY model ORDER BY model")?;
    let rows = statement.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    rows.map(|r| {
        r.map(|(m, v)| (m, u64::try_from(v).unwrap_or(0)))
            .map_err(StoreError::from)
    })
    .collect()
}

pub fn insert_job(
    tx: &mut Tx<'_>,
    job: &Job,
    request: &str,
    owner: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO jobs (id, model, request, info, state, owner, heartbeat_ms, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
        params![
            job.job,
            job.model,
            request,
            serde_json::to_string(job).map_err(json_error)?,
            job.state.name(),
            owner,
            job.created_ms
        ],
    )?;
    tx.event(
        "job.created",
        &job.job,
        &serde_json::json!({"model": job.model}),
    )?;
    Ok(())
}

pub fn update_job(tx: &mut Tx<'_>, job: &Job) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE jobs SET info = ?2, state = ?3, heartbeat_ms = ?4 WHERE id = ?1",
        params![
            job.job,
            serde_json::to_string(job).map_err(json_error)?,
            job.state.name(),
            mlmesh_store::now_ms()
        ],
    )?;
    if job.state.is_final() {
        tx.event(
            &format!("job.{}", job.state.name()),
            &job.job,
            &serde_json::json!({"model": job.model, "version": job.version}),
        )?;
    }
    Ok(())
}

/// Saves a running job's progress, unless it has finished meanwhile (a late progress write
/// must never turn a finished job back into a running one). Returns whether a cancel was asked.
pub fn save_progress(tx: &mut Tx<'_>, job: &Job) -> Result<bool, StoreError> {
    tx.execute(
        "UPDATE jobs SET info = ?2, heartbeat_ms = ?3 WHERE id = ?1 AND state = 'running'",
        params![
            job.job,
            serde_json::to_string(job).map_err(json_error)?,
            mlmesh_store::now_ms()
        ],
    )?;
    Ok(tx.query_row(
        "SELECT cancel FROM jobs WHERE id = ?1",
        params![job.job],
        |r| r.get(0),
    )?)
}

/// The job and whether a cancel was asked for it.
pub fn job(conn: &Connection, id: &str) -> Result<Option<(Job, bool, String)>, StoreError> {
    conn.query_row(
        "SELECT info, cancel, request FROM jobs WHERE id = ?1",
        params![id],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, String>(2)?,
            ))
        },
    )
    .optional()?
    .map(|(info, cancel, request)| {
        Ok((
            serde_json::from_str(&info).map_err(json_error)?,
            cancel,
            request,
        ))
    })
    .transpose()
}

pub fn jobs(conn: &Connection, limit: usize) -> Result<Vec<Job>, StoreError> {
    let mut statement =
        conn.prepare_cached("SELECT info FROM jobs ORDER BY created_ms DESC, id LIMIT ?1")?;
    let rows = statement.query_map(params![limit as i64], |r| r.get::<_, String>(0))?;
    rows.map(|r| serde_json::from_str(&r?).map_err(json_error))
        .collect()
}

pub fn request_cancel(tx: &mut Tx<'_>, id: &str) -> Result<bool, StoreError> {
    Ok(tx.execute("UPDATE jobs SET cancel = 1 WHERE id = ?1", params![id])? == 1)
}

/// Keeps this owner's unfinished jobs alive in the eyes of other replicas.
pub fn heartbeat(tx: &mut Tx<'_>, owner: &str) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE jobs SET heartbeat_ms = ?2 WHERE owner = ?1 AND state IN ('queued', 'running')",
        params![owner, mlmesh_store::now_ms()],
    )?;
    Ok(())
}

/// Fails unfinished jobs of `owner` (this replica, restarting) or whose owner went silent
/// before `stale_before_ms`. Returns how many.
pub fn fail_orphans(
    tx: &mut Tx<'_>,
    owner: &str,
    stale_before_ms: i64,
) -> Result<usize, StoreError> {
    let mut statement = tx.prepare(
        "SELECT info FROM jobs WHERE state IN ('queued', 'running') AND (owner = ?1 OR heartbeat_ms < ?2)",
    )?;
    let orphans: Vec<String> = statement
        .query_map(params![owner, stale_before_ms], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    drop(statement);
    for info in &orphans {
        let mut job: Job = serde_json::from_str(info).map_err(json_error)?;
        job.state = JobState::Failed;
        job.error = Some(
            "interrupted: the replica running it stopped before it finished; submit it again"
                .into(),
        );
        job.finished_ms = Some(mlmesh_store::now_ms());
        update_job(tx, &job)?;
    }
    Ok(orphans.len())
}

/// Stores a version's out-of-fold predictions (in the version's own transaction).
pub fn insert_oof(
    tx: &mut Tx<'_>,
    model: &str,
    version: u64,
    oof: &crate::jobs::Oof,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO oof (model, version, rows, columns, data) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            model,
            version as i64,
            serde_json::to_string(&oof.rows).map_err(json_error)?,
            oof.columns as i64,
            serde_json::to_string(&oof.data).map_err(json_error)?,
        ],
    )?;
    Ok(())
}

/// A version's out-of-fold predictions, if it was trained to keep them.
pub fn oof(
    c: &Connection,
    model: &str,
    version: u64,
) -> Result<Option<crate::jobs::Oof>, StoreError> {
    let row: Option<(String, i64, String)> = c
        .query_row(
            "SELECT rows, columns, data FROM oof WHERE model = ?1 AND version = ?2",
            params![model, version as i64],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    row.map(|(rows, columns, data)| {
        Ok(crate::jobs::Oof {
            rows: serde_json::from_str(&rows).map_err(json_error)?,
            columns: usize::try_from(columns).unwrap_or(0),
            data: serde_json::from_str(&data).map_err(json_error)?,
        })
    })
    .transpose()
}
