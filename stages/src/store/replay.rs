//! The `replay_files` table (which archive files this database has loaded) and the job-row
//! steps of a replay: claiming a job whatever its status, recording a file in the batch's
//! transaction, and emptying the database before a reload.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};

use super::sql::{self, autocommit};
use crate::store::jobs::{JobRow, JOB_COLUMNS, TAKE_JOB};

/// Claims a job for replay: like a backfill claim (lease, status `running`), but a
/// completed job is taken too, since an archive may hold files it has not loaded yet.
/// None when another live worker holds it.
pub async fn claim(
    pool: &PgPool,
    job_id: i64,
    owner: &str,
    lease: Duration,
) -> Result<Option<JobRow>, sqlx::Error> {
    let sql = format!(
        "UPDATE backfill_jobs j SET {TAKE_JOB}, verified_at = NULL
         FROM municipalities m
         WHERE j.id = $3 AND m.id = j.municipality_id
           AND (j.lease_owner IS NULL OR j.lease_expires_at < now() OR j.lease_owner = $1)
         RETURNING {JOB_COLUMNS}"
    );
    sql::query_as(&sql)
        .bind(owner)
        .bind(lease.as_secs_f64())
        .bind(job_id)
        .fetch_optional(autocommit(pool))
        .await
}

/// The (path, sha256) of every file already loaded for a job.
pub async fn loaded_files(
    pool: &PgPool,
    job_id: i64,
) -> Result<HashSet<(String, String)>, sqlx::Error> {
    let rows: Vec<(String, String)> =
        sql::query_as("SELECT path, sha256 FROM replay_files WHERE job_id = $1")
            .bind(job_id)
            .fetch_all(autocommit(pool))
            .await?;
    Ok(rows.into_iter().collect())
}

/// One loaded file, as recorded.
#[derive(Clone, Debug)]
pub struct LoadedFile<'a> {
    pub job_id: i64,
    pub path: &'a str,
    pub sha256: &'a str,
    pub pass: i32,
    pub seq: i64,
    pub pages: i64,
    pub rejects: i64,
}

/// Records a file and adds its counts to the job, inside the batch's transaction. False
/// when the file was already recorded or the job's lease is not `owner`'s: the caller must
/// then roll back.
pub async fn record_file(
    conn: &mut PgConnection,
    file: &LoadedFile<'_>,
    owner: &str,
    fetched: i64,
    counts: [i64; 4],
    elapsed: Duration,
) -> Result<bool, sqlx::Error> {
    let inserted = sql::query(
        "INSERT INTO replay_files (path, sha256, job_id, pass, seq, pages, rejects)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (path, sha256) DO NOTHING",
    )
    .bind(file.path)
    .bind(file.sha256)
    .bind(file.job_id)
    .bind(file.pass)
    .bind(file.seq)
    .bind(file.pages)
    .bind(file.rejects)
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() != 1 {
        return Ok(false);
    }
    let [created, updated, unchanged, rejected] = counts;
    let moved = sql::query(
        "UPDATE backfill_jobs SET
            pages_fetched = pages_fetched + $3, pages_created = pages_created + $4,
            pages_updated = pages_updated + $5, pages_unchanged = pages_unchanged + $6,
            pages_rejected = pages_rejected + $7, elapsed_seconds = elapsed_seconds + $8,
            heartbeat_at = now(), updated_at = now()
         WHERE id = $1 AND lease_owner = $2",
    )
    .bind(file.job_id)
    .bind(owner)
    .bind(fetched)
    .bind(created)
    .bind(updated)
    .bind(unchanged)
    .bind(rejected)
    .bind(elapsed.as_secs_f64())
    .execute(&mut *conn)
    .await?;
    Ok(moved.rows_affected() == 1)
}

/// True when the file is recorded and the job is still leased by `owner`.
pub async fn file_recorded(
    pool: &PgPool,
    job_id: i64,
    path: &str,
    sha256: &str,
    owner: &str,
) -> Result<bool, sqlx::Error> {
    sql::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM replay_files WHERE path = $1 AND sha256 = $2)
            AND EXISTS (SELECT 1 FROM backfill_jobs WHERE id = $3 AND lease_owner = $4)",
    )
    .bind(path)
    .bind(sha256)
    .bind(job_id)
    .bind(owner)
    .fetch_one(autocommit(pool))
    .await
}

/// True when the database holds no pages, documents, rejects, jobs or loaded files (the
/// municipality list may be there: it is reference data, not content).
pub async fn is_empty(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sql::query_scalar(
        "SELECT NOT EXISTS (SELECT 1 FROM meeting_pages) AND NOT EXISTS (SELECT 1 FROM meeting_documents)
            AND NOT EXISTS (SELECT 1 FROM page_rejects) AND NOT EXISTS (SELECT 1 FROM backfill_jobs)
            AND NOT EXISTS (SELECT 1 FROM replay_files)",
    )
    .fetch_one(autocommit(pool))
    .await
}

/// Empties the content tables (CASCADE: tables added later that point at them go too).
pub async fn empty(pool: &PgPool) -> Result<(), sqlx::Error> {
    sql::query(
        "TRUNCATE replay_files, page_rejects, meeting_pages, meeting_documents, backfill_jobs
         RESTART IDENTITY CASCADE",
    )
    .execute(autocommit(pool))
    .await?;
    Ok(())
}
