//! The `backfill_jobs` table: one row per (municipality, document type) holding its status,
//! checkpoint, counters, verification and lease.
//!
//! Claims use `FOR UPDATE SKIP LOCKED` and a lease that the holder renews (heartbeat): any
//! number of processes on any number of machines share the work, and a dead worker's job
//! is taken over once its lease expires. Nothing relies on session state, so it works
//! through PgBouncer in transaction pooling mode.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::sql::{self, autocommit};
use crate::batch::{DocumentType, JobKey};

/// A job's `status` (the schema's CHECK lists the same five).
///
/// Decoded by sqlx; bound as [`JobStatus::as_str`], never as the enum itself: sqlx looks
/// the OID of a named type up with a prepared statement of its own, which a
/// transaction-pooling PgBouncer does not keep (see `store::sql`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, sqlx::Type, serde::Serialize)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Paused,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Paused => "paused",
        }
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job row with its municipality's subdomain.
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize)]
pub struct JobRow {
    pub id: i64,
    pub municipality_id: i64,
    pub subdomain: String,
    pub document_type: DocumentType,
    pub status: JobStatus,
    pub last_cursor: Option<String>,
    pub batch_seq: i64,
    pub pass: i32,
    pub pages_fetched: i64,
    pub pages_created: i64,
    pub pages_updated: i64,
    pub pages_unchanged: i64,
    pub pages_rejected: i64,
    pub errors_encountered: i64,
    pub expected_count: Option<i64>,
    pub expected_source: Option<String>,
    pub actual_count: Option<i64>,
    pub verified_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub retry_count: i32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub elapsed_seconds: f64,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
}

impl JobRow {
    pub fn key(&self) -> JobKey {
        JobKey {
            job_id: self.id,
            municipality_id: self.municipality_id,
            subdomain: self.subdomain.clone(),
            document_type: self.document_type,
        }
    }

    /// Completed, and verified against the source (or the manifest) since.
    pub fn completed_and_verified(&self) -> bool {
        self.status == JobStatus::Completed && self.verified_at.is_some()
    }
}

pub(crate) const JOB_COLUMNS: &str =
    "j.id, j.municipality_id, m.subdomain, j.document_type, j.status, j.last_cursor,
    j.batch_seq, j.pass, j.pages_fetched, j.pages_created, j.pages_updated, j.pages_unchanged,
    j.pages_rejected, j.errors_encountered, j.expected_count, j.expected_source, j.actual_count,
    j.verified_at, j.last_error, j.retry_count, j.started_at, j.finished_at, j.elapsed_seconds,
    j.lease_owner, j.lease_expires_at";

/// Registers the job for (municipality, document type) if new; returns its id.
pub async fn ensure(
    pool: &PgPool,
    municipality_id: i64,
    document_type: DocumentType,
) -> Result<i64, sqlx::Error> {
    sql::query_scalar(
        "INSERT INTO backfill_jobs (municipality_id, document_type) VALUES ($1, $2)
         ON CONFLICT (municipality_id, document_type) DO UPDATE SET document_type = EXCLUDED.document_type
         RETURNING id",
    )
    .bind(municipality_id)
    .bind(document_type.as_str())
    .fetch_one(autocommit(pool))
    .await
}

/// Registers many jobs at once (one round trip: `backfill --subdomain all` plans thousands),
/// returning their ids in the order given.
pub async fn ensure_many(
    pool: &PgPool,
    jobs: &[(i64, DocumentType)],
) -> Result<Vec<i64>, sqlx::Error> {
    let municipalities: Vec<i64> = jobs.iter().map(|j| j.0).collect();
    let types: Vec<&str> = jobs.iter().map(|j| j.1.as_str()).collect();
    let mut tx = pool.begin().await?;
    sql::query(
        "INSERT INTO backfill_jobs (municipality_id, document_type)
         SELECT m, d FROM unnest($1::bigint[], $2::text[]) AS t(m, d)
         ON CONFLICT (municipality_id, document_type) DO NOTHING",
    )
    .bind(&municipalities)
    .bind(&types)
    .execute(&mut *tx)
    .await?;
    let ids: Vec<i64> = sql::query_scalar(
        "SELECT j.id FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS t(m, d, n)
         JOIN backfill_jobs j ON j.municipality_id = t.m AND j.document_type = t.d
         ORDER BY t.n",
    )
    .bind(&municipalities)
    .bind(&types)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(ids)
}

/// Starts a fresh pass for the given jobs that are completed (a rerun re-reads the source
/// and upserts; unchanged pages stay untouched). Jobs that are not completed keep their
/// checkpoint and continue from it. Returns how many were reset.
///
/// Only jobs that finished before `started_before` (this process's start): a job another
/// process completed while this one was starting belongs to the same run, not an earlier one.
pub async fn start_fresh_pass_for_completed(
    pool: &PgPool,
    ids: &[i64],
    started_before: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let done = sql::query(
        "UPDATE backfill_jobs SET status = 'pending', last_cursor = NULL, batch_seq = 0, pass = pass + 1,
            pages_fetched = 0, pages_created = 0, pages_updated = 0, pages_unchanged = 0,
            pages_rejected = 0, errors_encountered = 0, verified_at = NULL, last_error = NULL,
            retry_count = 0, started_at = NULL, finished_at = NULL, elapsed_seconds = 0, updated_at = now()
         WHERE id = ANY($1) AND status = 'completed' AND (finished_at IS NULL OR finished_at < $2)
           AND (lease_owner IS NULL OR lease_expires_at < now())",
    )
    .bind(ids)
    .bind(started_before)
    .execute(autocommit(pool))
    .await?;
    Ok(done.rows_affected())
}

/// Which job a worker claims next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimOrder {
    /// The biggest first, so a run does not end waiting on one giant.
    BiggestFirst,
    /// The smallest first, among jobs of at most this many pages (by their expected count,
    /// else their municipality's): a worker that clears the many small tables while the
    /// others load the big ones, instead of leaving them, each a few round trips of
    /// latency, to the end of the run.
    SmallestFirst { at_most: i64 },
}

/// The SET list of a claim that gives job `j` to owner `$1` for `$2` seconds: running, with
/// a retry counted when it had failed, been paused or been interrupted.
pub(crate) const TAKE_JOB: &str = "status = 'running', lease_owner = $1,
    lease_expires_at = now() + make_interval(secs => $2), heartbeat_at = now(),
    retry_count = j.retry_count + CASE WHEN j.status IN ('failed', 'paused', 'running') THEN 1 ELSE 0 END,
    started_at = coalesce(j.started_at, now()), finished_at = NULL, updated_at = now()";

/// Claims the next job among `candidates` (not in `skip`) that is not completed and not
/// leased by a live worker, in `order`.
pub async fn claim_next(
    pool: &PgPool,
    candidates: &[i64],
    skip: &[i64],
    owner: &str,
    lease: Duration,
    order: ClaimOrder,
) -> Result<Option<JobRow>, sqlx::Error> {
    let (filter, direction) = match order {
        ClaimOrder::BiggestFirst => (String::new(), "DESC"),
        ClaimOrder::SmallestFirst { at_most } => (
            format!("AND coalesce(j.expected_count, m.pages, 0) <= {at_most}"),
            "ASC",
        ),
    };
    let sql = format!(
        "WITH next AS (
            SELECT j.id FROM backfill_jobs j JOIN municipalities m ON m.id = j.municipality_id
            WHERE j.id = ANY($3) AND NOT (j.id = ANY($4)) AND j.status <> 'completed'
              AND (j.lease_owner IS NULL OR j.lease_expires_at < now()) {filter}
            ORDER BY coalesce(j.expected_count, m.pages, 0) {direction}, j.id
            LIMIT 1
            FOR UPDATE OF j SKIP LOCKED
         )
         UPDATE backfill_jobs j SET {TAKE_JOB}
         FROM next, municipalities m
         WHERE j.id = next.id AND m.id = j.municipality_id
         RETURNING {JOB_COLUMNS}"
    );
    sql::query_as(&sql)
        .bind(owner)
        .bind(lease.as_secs_f64())
        .bind(candidates)
        .bind(skip)
        .fetch_optional(autocommit(pool))
        .await
}

/// Claims one job whatever its status (for repairs), unless a live worker holds it.
pub async fn claim(
    pool: &PgPool,
    job_id: i64,
    owner: &str,
    lease: Duration,
) -> Result<Option<JobRow>, sqlx::Error> {
    let sql = format!(
        "UPDATE backfill_jobs j SET lease_owner = $2, lease_expires_at = now() + make_interval(secs => $3),
            heartbeat_at = now(), status = 'running', updated_at = now()
         FROM municipalities m
         WHERE j.id = $1 AND m.id = j.municipality_id AND (j.lease_owner IS NULL OR j.lease_expires_at < now())
         RETURNING {JOB_COLUMNS}"
    );
    sql::query_as(&sql)
        .bind(job_id)
        .bind(owner)
        .bind(lease.as_secs_f64())
        .fetch_optional(autocommit(pool))
        .await
}

/// Renews the leases of every running job this worker holds.
pub async fn heartbeat(pool: &PgPool, owner: &str, lease: Duration) -> Result<u64, sqlx::Error> {
    heartbeat_except(pool, owner, lease, &[]).await
}

/// Renews `owner`'s leases except those of `stalled` jobs: a job whose pipeline makes no
/// progress lets its lease expire, so that another worker can take it over.
pub async fn heartbeat_except(
    pool: &PgPool,
    owner: &str,
    lease: Duration,
    stalled: &[i64],
) -> Result<u64, sqlx::Error> {
    let r = sql::query(
        "UPDATE backfill_jobs SET lease_expires_at = now() + make_interval(secs => $2), heartbeat_at = now()
         WHERE lease_owner = $1 AND status = 'running' AND id <> ALL($3)",
    )
    .bind(owner)
    .bind(lease.as_secs_f64())
    .bind(stalled)
    .execute(autocommit(pool))
    .await?;
    Ok(r.rows_affected())
}

/// Pauses every job `owner` holds and clears its lease: a stop that abandons its batches
/// in flight hands the jobs back at once. A batch that commits afterwards is refused by
/// its checkpoint guard (the lease is no longer its owner's).
pub async fn abandon(pool: &PgPool, owner: &str) -> Result<u64, sqlx::Error> {
    let r = sql::query(
        "UPDATE backfill_jobs SET status = 'paused', lease_owner = NULL, lease_expires_at = NULL,
                updated_at = now()
         WHERE lease_owner = $1 AND status = 'running'",
    )
    .bind(owner)
    .execute(autocommit(pool))
    .await?;
    Ok(r.rows_affected())
}

/// How a worker leaves a job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    /// Also what a run's result says until the run has ended otherwise.
    #[default]
    Failed,
    Paused,
}

impl Outcome {
    /// The job's `status` after it: the one place an outcome becomes a status.
    pub fn status(self) -> JobStatus {
        match self {
            Outcome::Completed => JobStatus::Completed,
            Outcome::Failed => JobStatus::Failed,
            Outcome::Paused => JobStatus::Paused,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.status().as_str())
    }
}

/// Ends this worker's hold on a job. Returns false when the lease had been lost.
pub async fn release(
    pool: &PgPool,
    job_id: i64,
    owner: &str,
    outcome: Outcome,
    error: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let r = sql::query(
        "UPDATE backfill_jobs SET status = $3, last_error = coalesce($4, CASE WHEN $3 = 'completed' THEN NULL ELSE last_error END),
            errors_encountered = errors_encountered + CASE WHEN $4 IS NULL THEN 0 ELSE 1 END,
            finished_at = CASE WHEN $3 = 'paused' THEN NULL ELSE now() END,
            lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
         WHERE id = $1 AND lease_owner = $2",
    )
    .bind(job_id)
    .bind(owner)
    .bind(outcome.status().as_str())
    .bind(error)
    .execute(autocommit(pool))
    .await?;
    Ok(r.rows_affected() == 1)
}

/// A committed batch's counters, added to its job's in the checkpoint.
#[derive(Clone, Copy, Debug, Default)]
pub struct BatchCounts {
    pub fetched: i64,
    pub created: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub rejected: i64,
}

/// The job-cursor checkpoint, in the batch's transaction: moves the job's cursor past
/// batch `seq` and adds its counters, guarded by the lease and `batch_seq = seq - 1`.
/// Returns false when the guard refuses (the job is not ours, or the batch is not next).
pub async fn advance_cursor(
    conn: &mut sqlx::PgConnection,
    job_id: i64,
    owner: &str,
    seq: i64,
    cursor_after: Option<&str>,
    counts: BatchCounts,
    elapsed: Duration,
) -> Result<bool, sqlx::Error> {
    let moved = sql::query(
        "UPDATE backfill_jobs SET
            last_cursor = coalesce($4, last_cursor), batch_seq = $3,
            pages_fetched = pages_fetched + $5, pages_created = pages_created + $6,
            pages_updated = pages_updated + $7, pages_unchanged = pages_unchanged + $8,
            pages_rejected = pages_rejected + $9, elapsed_seconds = elapsed_seconds + $10,
            heartbeat_at = now(), updated_at = now()
         WHERE id = $1 AND lease_owner = $2 AND batch_seq = $3 - 1",
    )
    .bind(job_id)
    .bind(owner)
    .bind(seq)
    .bind(cursor_after)
    .bind(counts.fetched)
    .bind(counts.created)
    .bind(counts.updated)
    .bind(counts.unchanged)
    .bind(counts.rejected)
    .bind(elapsed.as_secs_f64())
    .execute(&mut *conn)
    .await?;
    Ok(moved.rows_affected() == 1)
}

/// Whether `owner` holds the job with its cursor at batch `seq`: after a refused
/// checkpoint, true means our own earlier attempt committed the batch.
pub async fn holds_at(
    pool: &PgPool,
    job_id: i64,
    owner: &str,
    seq: i64,
) -> Result<bool, sqlx::Error> {
    let row: Option<(i64, Option<String>)> =
        sql::query_as("SELECT batch_seq, lease_owner FROM backfill_jobs WHERE id = $1")
            .bind(job_id)
            .fetch_optional(autocommit(pool))
            .await?;
    Ok(matches!(row, Some((s, Some(o))) if s == seq && o == owner))
}

/// Clears a job's lease if `owner` still holds it (a holder found dead); 1 when it did.
pub async fn clear_lease(pool: &PgPool, job_id: i64, owner: &str) -> Result<u64, sqlx::Error> {
    let r = sql::query(
        "UPDATE backfill_jobs SET lease_owner = NULL, lease_expires_at = NULL
         WHERE id = $1 AND lease_owner = $2",
    )
    .bind(job_id)
    .bind(owner)
    .execute(autocommit(pool))
    .await?;
    Ok(r.rows_affected())
}

/// Records a verification result on a job.
pub async fn record_verification(
    pool: &PgPool,
    job_id: i64,
    expected: Option<(i64, &str)>,
    actual: i64,
    verified: bool,
    failed_reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    sql::query(
        "UPDATE backfill_jobs SET expected_count = $2, expected_source = $3, actual_count = $4,
            verified_at = CASE WHEN $5 THEN now() ELSE NULL END,
            verified_pages = CASE WHEN $5 THEN (SELECT m.pages FROM municipalities m WHERE m.id = municipality_id) ELSE verified_pages END,
            verified_last_updated = CASE WHEN $5 THEN (SELECT m.last_updated FROM municipalities m WHERE m.id = municipality_id) ELSE verified_last_updated END,
            status = CASE WHEN $6::text IS NOT NULL THEN 'failed' ELSE status END,
            last_error = CASE WHEN $6::text IS NOT NULL THEN $6 WHEN $5 THEN NULL ELSE last_error END,
            updated_at = now()
         WHERE id = $1",
    )
    .bind(job_id)
    .bind(expected.map(|e| e.0))
    .bind(expected.map(|e| e.1))
    .bind(actual)
    .bind(verified)
    .bind(failed_reason)
    .execute(autocommit(pool))
    .await?;
    Ok(())
}

/// Jobs among `ids` leased by another live worker: (subdomain, document type, owner, since).
pub async fn held_by_others(
    pool: &PgPool,
    ids: &[i64],
    owner: &str,
) -> Result<Vec<(String, String, String, DateTime<Utc>)>, sqlx::Error> {
    sql::query_as(
        "SELECT m.subdomain, j.document_type, j.lease_owner, coalesce(j.heartbeat_at, j.updated_at)
         FROM backfill_jobs j JOIN municipalities m ON m.id = j.municipality_id
         WHERE j.id = ANY($1) AND j.lease_owner IS NOT NULL AND j.lease_owner <> $2
           AND j.lease_expires_at >= now()
         ORDER BY m.subdomain, j.document_type",
    )
    .bind(ids)
    .bind(owner)
    .fetch_all(autocommit(pool))
    .await
}

/// Job rows, by id list or all.
pub async fn list(pool: &PgPool, ids: Option<&[i64]>) -> Result<Vec<JobRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM backfill_jobs j JOIN municipalities m ON m.id = j.municipality_id
         WHERE $1::bigint[] IS NULL OR j.id = ANY($1)
         ORDER BY m.subdomain, j.document_type"
    );
    sql::query_as(&sql)
        .bind(ids)
        .fetch_all(autocommit(pool))
        .await
}

/// Pages stored for a job (municipality + document type).
pub async fn count_pages(
    pool: &PgPool,
    municipality_id: i64,
    document_type: DocumentType,
) -> Result<i64, sqlx::Error> {
    sql::query_scalar(
        "SELECT count(*) FROM meeting_pages p JOIN meeting_documents d ON d.id = p.document_id
         WHERE d.municipality_id = $1 AND d.document_type = $2",
    )
    .bind(municipality_id)
    .bind(document_type.as_str())
    .fetch_one(autocommit(pool))
    .await
}

/// Distinct rejected source rows recorded for a job's table.
pub async fn count_rejects(
    pool: &PgPool,
    municipality_id: i64,
    document_type: DocumentType,
) -> Result<i64, sqlx::Error> {
    sql::query_scalar(
        "SELECT count(*) FROM page_rejects WHERE municipality_id = $1 AND document_type = $2",
    )
    .bind(municipality_id)
    .bind(document_type.as_str())
    .fetch_one(autocommit(pool))
    .await
}

/// The source ids of the pages stored for a job, sorted.
pub async fn local_source_ids(
    pool: &PgPool,
    municipality_id: i64,
    document_type: DocumentType,
) -> Result<Vec<String>, sqlx::Error> {
    sql::query_scalar(
        "SELECT p.source_id FROM meeting_pages p JOIN meeting_documents d ON d.id = p.document_id
         WHERE d.municipality_id = $1 AND d.document_type = $2 ORDER BY p.source_id",
    )
    .bind(municipality_id)
    .bind(document_type.as_str())
    .fetch_all(autocommit(pool))
    .await
}

/// The source ids recorded as rejects for a job's table.
pub async fn rejected_source_ids(
    pool: &PgPool,
    municipality_id: i64,
    document_type: DocumentType,
) -> Result<Vec<String>, sqlx::Error> {
    sql::query_scalar("SELECT DISTINCT source_id FROM page_rejects WHERE municipality_id = $1 AND document_type = $2 AND source_id IS NOT NULL")
        .bind(municipality_id)
        .bind(document_type.as_str())
        .fetch_all(autocommit(pool))
        .await
}

/// Deletes a job's pages with these source ids (and the documents left without pages),
/// in one transaction. Returns the pages deleted.
pub async fn delete_pages(
    pool: &PgPool,
    municipality_id: i64,
    document_type: DocumentType,
    source_ids: &[String],
) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let docs: Vec<i64> = sql::query_scalar(
        "DELETE FROM meeting_pages p USING meeting_documents d
         WHERE d.id = p.document_id AND d.municipality_id = $1 AND d.document_type = $2 AND p.source_id = ANY($3)
         RETURNING p.document_id",
    )
    .bind(municipality_id)
    .bind(document_type.as_str())
    .bind(source_ids)
    .fetch_all(&mut *tx)
    .await?;
    sql::query("DELETE FROM meeting_documents d WHERE d.id = ANY($1) AND NOT EXISTS (SELECT 1 FROM meeting_pages p WHERE p.document_id = d.id)")
        .bind(&docs)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(docs.len() as u64)
}

/// Records the expected count found when a job starts (for progress and ETA).
pub async fn set_expected(
    pool: &PgPool,
    job_id: i64,
    expected: i64,
    route: &str,
) -> Result<(), sqlx::Error> {
    sql::query("UPDATE backfill_jobs SET expected_count = $2, expected_source = $3 WHERE id = $1")
        .bind(job_id)
        .bind(expected)
        .bind(route)
        .execute(autocommit(pool))
        .await?;
    Ok(())
}

/// Rows of the `meeting_page_stats` materialized view, summed per municipality and type.
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize)]
pub struct Totals {
    pub subdomain: String,
    pub document_type: DocumentType,
    pub pages: i64,
    pub documents: i64,
    pub first_month: Option<chrono::NaiveDate>,
    pub last_month: Option<chrono::NaiveDate>,
}

pub async fn totals(pool: &PgPool) -> Result<Vec<Totals>, sqlx::Error> {
    sql::query_as(
        "SELECT m.subdomain, s.document_type, sum(s.page_count)::bigint AS pages, sum(s.document_count)::bigint AS documents,
                min(s.month) AS first_month, max(s.month) AS last_month
         FROM meeting_page_stats s JOIN municipalities m ON m.id = s.municipality_id
         GROUP BY m.subdomain, s.document_type ORDER BY m.subdomain, s.document_type",
    )
    .fetch_all(autocommit(pool))
    .await
}

/// Refreshes `meeting_page_stats` without blocking readers.
pub async fn refresh_stats(pool: &PgPool) -> Result<(), sqlx::Error> {
    // One simple-protocol statement, like the other maintenance statements.
    sqlx::raw_sql("REFRESH MATERIALIZED VIEW CONCURRENTLY meeting_page_stats")
        .execute(pool)
        .await?;
    Ok(())
}

/// The rows still to fetch for these jobs, when known: each job's expected count, or the
/// sites list's `pages` (agendas + minutes) when both of a municipality's jobs are planned.
pub async fn expected_remaining(pool: &PgPool, ids: &[i64]) -> Result<Option<i64>, sqlx::Error> {
    sql::query_scalar(
        "WITH per_muni AS (
            SELECT j.municipality_id, count(*) AS jobs, count(j.expected_count) AS counted,
                   sum(j.expected_count) AS expected, sum(j.pages_fetched) AS fetched, max(m.pages) AS site_pages
            FROM backfill_jobs j JOIN municipalities m ON m.id = j.municipality_id
            WHERE j.id = ANY($1) AND j.status <> 'completed'
            GROUP BY j.municipality_id
         )
         SELECT CASE WHEN bool_and(counted = jobs OR (jobs = 2 AND site_pages IS NOT NULL))
                THEN sum(greatest(CASE WHEN counted = jobs THEN expected ELSE site_pages END - fetched, 0))::bigint END
         FROM per_muni",
    )
    .bind(ids)
    .fetch_one(autocommit(pool))
    .await
}

/// Jobs being loaded right now by other live workers (any run).
pub async fn running_elsewhere(pool: &PgPool, owner: &str) -> Result<i64, sqlx::Error> {
    sql::query_scalar("SELECT count(*) FROM backfill_jobs WHERE status = 'running' AND lease_owner <> $1 AND lease_expires_at >= now()")
        .bind(owner)
        .fetch_one(autocommit(pool))
        .await
}

/// The lease that lets one process at a time prepare the database for search after a
/// load (VACUUM, index builds and concurrent DDL from several processes would otherwise
/// deadlock): see `leases`.
pub const POST_LOAD_LEASE: &str = "post-load";

/// True when nothing is stored yet for this municipality and document type: a load may
/// then COPY its pages straight into `meeting_pages` (`LoadConfig::insert_first`).
pub async fn stores_nothing(
    pool: &PgPool,
    municipality_id: i64,
    document_type: &str,
) -> Result<bool, sqlx::Error> {
    sql::query_scalar(
        "SELECT NOT EXISTS (SELECT 1 FROM meeting_documents
                            WHERE municipality_id = $1 AND document_type = $2)",
    )
    .bind(municipality_id)
    .bind(document_type)
    .fetch_one(autocommit(pool))
    .await
}

/// The `transform::page_key`s of the pages this job's rows up to `cursor` (a source id,
/// compared bytewise like the source's `_sort=id`) hold: what a pass resumed after that
/// cursor has seen already, for its duplicate detection.
pub async fn page_keys_through(
    pool: &PgPool,
    municipality_id: i64,
    document_type: DocumentType,
    cursor: &str,
) -> Result<std::collections::HashSet<u64>, sqlx::Error> {
    use futures::TryStreamExt;
    let mut tx = pool.begin().await?;
    let mut rows = sql::query_as::<(String, String, i32, i32)>(
        "SELECT p.source_id, d.meeting_name, (d.meeting_date - date '1970-01-01'), p.page_number
         FROM meeting_pages p JOIN meeting_documents d ON d.id = p.document_id
         WHERE d.municipality_id = $1 AND d.document_type = $2",
    )
    .bind(municipality_id)
    .bind(document_type.as_str())
    .fetch(&mut *tx);
    let mut keys = std::collections::HashSet::new();
    while let Some((source_id, meeting, date, page)) = rows.try_next().await? {
        if source_id.as_bytes() <= cursor.as_bytes() {
            keys.insert(crate::transform::page_key(&meeting, date, page));
        }
    }
    drop(rows);
    tx.commit().await?;
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::{JobStatus, Outcome};

    #[test]
    fn every_status_is_one_the_schema_allows_and_every_outcome_maps_to_its_own() {
        let schema = include_str!("../../../migrations/0001_schema.sql");
        let check = schema
            .lines()
            .find(|l| l.contains("CHECK (status IN"))
            .expect("backfill_jobs.status has a CHECK constraint");
        use JobStatus::*;
        for status in [Pending, Running, Completed, Failed, Paused] {
            assert!(
                check.contains(&format!("'{status}'")),
                "{status} not in {check}"
            );
        }
        assert_eq!(Outcome::Completed.status(), Completed);
        assert_eq!(Outcome::Failed.status(), Failed);
        assert_eq!(Outcome::Paused.status(), Paused);
        assert_eq!(Outcome::default(), Outcome::Failed);
    }
}
