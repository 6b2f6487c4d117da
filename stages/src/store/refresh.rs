//! The refresh side of `backfill_jobs` and `refresh_runs`: claiming a job for a refresh
//! (by the command, or from the queue that webhooks fill), ending it, what it spent, and
//! which municipalities changed since their last verification.
//!
//! The queue is the job table itself (migration 0011): `refresh_requested` counts the
//! webhooks, `refresh_done` the ones a verified refresh has served. Claims use
//! `FOR UPDATE SKIP LOCKED` and the same lease as a backfill, so any number of `serve`,
//! `refresh` and `backfill` processes share it, and no job is refreshed twice at once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::jobs::JobRow;
use super::sql::{self, autocommit};
use crate::batch::DocumentType;

/// What started a refresh (`refresh_runs.trigger`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Command,
    Webhook,
    Schedule,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Command => "command",
            Trigger::Webhook => "webhook",
            Trigger::Schedule => "schedule",
        }
    }
}

/// A job claimed for a refresh.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub job: JobRow,
    /// Its row in `refresh_runs`.
    pub run_id: i64,
    /// The oldest webhook this refresh serves (None: nothing was queued).
    pub requested_at: Option<DateTime<Utc>>,
}

/// How a refresh ended (`refresh_runs.status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStatus {
    Verified,
    Unverified,
    Failed,
    Paused,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Verified => "verified",
            RunStatus::Unverified => "unverified",
            RunStatus::Failed => "failed",
            RunStatus::Paused => "paused",
        }
    }
}

#[derive(sqlx::FromRow)]
struct ClaimedRow {
    #[sqlx(flatten)]
    job: JobRow,
    requested_at: Option<DateTime<Utc>>,
}

/// The common end of both claim statements: takes the row `next` picked, starts a new
/// pass in refresh mode, and returns the job with when its oldest webhook arrived. Each
/// claim prefixes its own `WITH next AS (SELECT j.id ... LIMIT 1`.
macro_rules! claim_refresh_sql {
    ($next:literal) => {
        concat!(
            $next,
            "
            FOR UPDATE OF j SKIP LOCKED
         ), old AS (
            SELECT j.id, j.refresh_requested_at FROM backfill_jobs j JOIN next ON next.id = j.id
         )
         UPDATE backfill_jobs j SET status = 'running', lease_owner = $1,
            lease_expires_at = now() + make_interval(secs => $2), heartbeat_at = now(),
            mode = 'refresh', last_cursor = NULL, pass = j.pass + 1,
            pages_fetched = 0, pages_created = 0, pages_updated = 0, pages_unchanged = 0,
            pages_rejected = 0, pages_deleted = 0, source_bytes = 0, source_requests = 0,
            verified_at = NULL, started_at = now(), finished_at = NULL, elapsed_seconds = 0,
            refresh_claimed = j.refresh_requested, refresh_requested_at = NULL, updated_at = now()
         FROM old, municipalities m
         WHERE j.id = old.id AND m.id = j.municipality_id
         RETURNING j.id, j.municipality_id, m.subdomain, j.document_type, j.status, j.last_cursor,
            j.batch_seq, j.pass, j.pages_fetched, j.pages_created, j.pages_updated, j.pages_unchanged,
            j.pages_rejected, j.errors_encountered, j.expected_count, j.expected_source, j.actual_count,
            j.verified_at, j.last_error, j.retry_count, j.started_at, j.finished_at, j.elapsed_seconds,
            j.lease_owner, j.lease_expires_at, old.refresh_requested_at AS requested_at"
        )
    };
}

/// Claims the next of `candidates` (not in `skip`) whose lease is free, whatever its
/// status, for a refresh by the command. The job starts a new pass in refresh mode.
pub async fn claim_next(
    pool: &PgPool,
    candidates: &[i64],
    skip: &[i64],
    owner: &str,
    lease: Duration,
    trigger: Trigger,
) -> Result<Option<Claimed>, sqlx::Error> {
    let row: Option<ClaimedRow> = sql::query_as(claim_refresh_sql!(
        "WITH next AS (
            SELECT j.id FROM backfill_jobs j JOIN municipalities m ON m.id = j.municipality_id
            WHERE j.id = ANY($3) AND NOT (j.id = ANY($4))
              AND (j.lease_owner IS NULL OR j.lease_expires_at < now())
            ORDER BY coalesce(j.expected_count, m.pages, 0) DESC, j.id
            LIMIT 1"
    ))
    .bind(owner)
    .bind(lease.as_secs_f64())
    .bind(candidates)
    .bind(skip)
    .fetch_optional(autocommit(pool))
    .await?;
    start_run(pool, row, owner, trigger).await
}

/// Claims the queued job whose oldest webhook waits longest (and whose lease is free and
/// backoff over), for a refresh.
pub async fn claim_queued(
    pool: &PgPool,
    owner: &str,
    lease: Duration,
) -> Result<Option<Claimed>, sqlx::Error> {
    let row: Option<ClaimedRow> = sql::query_as(claim_refresh_sql!(
        "WITH next AS (
            SELECT j.id FROM backfill_jobs j
            WHERE j.refresh_requested > j.refresh_done
              AND (j.lease_owner IS NULL OR j.lease_expires_at < now())
              AND (j.refresh_not_before IS NULL OR j.refresh_not_before <= now())
            ORDER BY j.refresh_requested_at NULLS LAST, j.id
            LIMIT 1"
    ))
    .bind(owner)
    .bind(lease.as_secs_f64())
    .fetch_optional(autocommit(pool))
    .await?;
    start_run(pool, row, owner, Trigger::Webhook).await
}

async fn start_run(
    pool: &PgPool,
    row: Option<ClaimedRow>,
    owner: &str,
    trigger: Trigger,
) -> Result<Option<Claimed>, sqlx::Error> {
    let Some(row) = row else {
        return Ok(None);
    };
    let run_id: i64 = sql::query_scalar(
        "INSERT INTO refresh_runs (job_id, owner, trigger, requested_at) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(row.job.id)
    .bind(owner)
    .bind(trigger.as_str())
    .bind(row.requested_at)
    .fetch_one(autocommit(pool))
    .await?;
    Ok(Some(Claimed {
        job: row.job,
        run_id,
        requested_at: row.requested_at,
    }))
}

/// What a refresh did and spent, recorded on its job and run.
#[derive(Clone, Debug, Default)]
pub struct RunRecord {
    pub id_route: Option<&'static str>,
    pub fetched: u64,
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
    pub bytes: u64,
    pub requests: u64,
    pub error: Option<String>,
}

/// Ends a refresh: the job's lease is released with its status, what it spent is
/// recorded, and when verified the webhooks it served are marked done (a webhook that
/// came during the run stays queued: one more refresh). Returns false when the lease
/// had been lost (nothing is changed then but the run row).
pub async fn finish(
    pool: &PgPool,
    claimed: &Claimed,
    owner: &str,
    status: RunStatus,
    record: &RunRecord,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let job_status = match status {
        RunStatus::Verified | RunStatus::Unverified => "completed",
        RunStatus::Failed => "failed",
        RunStatus::Paused => "paused",
    };
    let done = sql::query(
        "UPDATE backfill_jobs SET status = $3,
            last_error = CASE WHEN $3 = 'completed' THEN NULL ELSE coalesce($4, last_error) END,
            errors_encountered = errors_encountered + CASE WHEN $4::text IS NULL THEN 0 ELSE 1 END,
            finished_at = CASE WHEN $3 = 'paused' THEN NULL ELSE now() END,
            lease_owner = NULL, lease_expires_at = NULL, updated_at = now(),
            id_route = coalesce($5, id_route), source_bytes = source_bytes + $6,
            source_requests = source_requests + $7,
            refresh_done = CASE WHEN $8 THEN greatest(refresh_done, refresh_claimed) ELSE refresh_done END,
            refresh_requested_at = CASE WHEN $8 THEN refresh_requested_at
                ELSE least(refresh_requested_at, coalesce($9, refresh_requested_at)) END,
            refresh_not_before = CASE WHEN $3 = 'failed'
                THEN now() + make_interval(secs => least(300, 2 ^ least(retry_count, 8)))
                ELSE NULL END,
            retry_count = CASE WHEN $3 = 'failed' THEN retry_count + 1 ELSE 0 END
         WHERE id = $1 AND lease_owner = $2",
    )
    .bind(claimed.job.id)
    .bind(owner)
    .bind(job_status)
    .bind(record.error.as_deref())
    .bind(record.id_route)
    .bind(record.bytes as i64)
    .bind(record.requests as i64)
    .bind(status == RunStatus::Verified)
    .bind(claimed.requested_at)
    .execute(&mut *tx)
    .await?;
    sql::query(
        "UPDATE refresh_runs SET finished_at = now(), status = $2, id_route = $3,
            pages_fetched = $4, pages_created = $5, pages_updated = $6, pages_deleted = $7,
            source_bytes = $8, source_requests = $9, error = $10
         WHERE id = $1",
    )
    .bind(claimed.run_id)
    .bind(status.as_str())
    .bind(record.id_route)
    .bind(record.fetched as i64)
    .bind(record.created as i64)
    .bind(record.updated as i64)
    .bind(record.deleted as i64)
    .bind(record.bytes as i64)
    .bind(record.requests as i64)
    .bind(record.error.as_deref())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}

/// Adds pages removed upstream to the job's counter.
pub async fn add_deleted(pool: &PgPool, job_id: i64, deleted: u64) -> Result<(), sqlx::Error> {
    sql::query("UPDATE backfill_jobs SET pages_deleted = pages_deleted + $2 WHERE id = $1")
        .bind(job_id)
        .bind(deleted as i64)
        .execute(autocommit(pool))
        .await?;
    Ok(())
}

/// Removes the recorded rejects of source rows that no longer exist upstream (they
/// would count in the verification as rows the source still has).
pub async fn delete_rejects(
    pool: &PgPool,
    municipality_id: i64,
    document_type: DocumentType,
    source_ids: &[String],
) -> Result<u64, sqlx::Error> {
    let r = sql::query(
        "DELETE FROM page_rejects WHERE municipality_id = $1 AND document_type = $2 AND source_id = ANY($3)",
    )
    .bind(municipality_id)
    .bind(document_type.as_str())
    .bind(source_ids)
    .execute(autocommit(pool))
    .await?;
    Ok(r.rows_affected())
}

/// Of `ids`, the jobs whose municipality's `pages` or `last_updated` changed since the
/// job was last verified, or that were never verified.
pub async fn changed(pool: &PgPool, ids: &[i64]) -> Result<Vec<i64>, sqlx::Error> {
    sql::query_scalar(
        "SELECT j.id FROM backfill_jobs j JOIN municipalities m ON m.id = j.municipality_id
         WHERE j.id = ANY($1)
           AND (j.verified_at IS NULL OR j.status <> 'completed'
                OR m.pages IS DISTINCT FROM j.verified_pages
                OR m.last_updated IS DISTINCT FROM j.verified_last_updated)
         ORDER BY j.id",
    )
    .bind(ids)
    .fetch_all(autocommit(pool))
    .await
}

/// Clears the leases of jobs held by processes of this machine that are gone (a
/// `kill -9`), so the queue does not wait for them to expire. Returns how many.
pub async fn release_dead_local(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let owners: Vec<String> = sql::query_scalar(
        "SELECT DISTINCT lease_owner FROM backfill_jobs WHERE lease_owner IS NOT NULL",
    )
    .fetch_all(autocommit(pool))
    .await?;
    let mut released = 0;
    for owner in owners
        .iter()
        .filter(|o| super::leases::is_dead_local_process(o))
    {
        let r = sql::query(
            "UPDATE backfill_jobs SET lease_owner = NULL, lease_expires_at = NULL,
                status = CASE WHEN status = 'running' THEN 'paused' ELSE status END
             WHERE lease_owner = $1",
        )
        .bind(owner)
        .execute(autocommit(pool))
        .await?;
        released += r.rows_affected();
    }
    Ok(released)
}

/// The queue and the jobs, for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct QueueStats {
    /// Jobs with a refresh requested and not yet done.
    pub depth: i64,
    /// Jobs by status.
    pub by_status: Vec<(String, i64)>,
}

pub async fn queue_stats(pool: &PgPool) -> Result<QueueStats, sqlx::Error> {
    let depth: i64 = sql::query_scalar(
        "SELECT count(*) FROM backfill_jobs WHERE refresh_requested > refresh_done",
    )
    .fetch_one(autocommit(pool))
    .await?;
    let by_status: Vec<(String, i64)> =
        sql::query_as("SELECT status, count(*) FROM backfill_jobs GROUP BY status ORDER BY status")
            .fetch_all(autocommit(pool))
            .await?;
    Ok(QueueStats { depth, by_status })
}

/// The `transform::page_key`s of a job's stored pages, but those with an id in `except`
/// (stale: about to be replaced or removed): a new row for one of the others' pages is a
/// duplicate, a reject as in a backfill.
pub async fn page_keys_except(
    pool: &PgPool,
    municipality_id: i64,
    document_type: DocumentType,
    except: &std::collections::HashSet<&str>,
) -> Result<std::collections::HashSet<u64>, sqlx::Error> {
    let rows: Vec<(String, String, i32, i32)> = sql::query_as(
        "SELECT p.source_id, d.meeting_name, (d.meeting_date - date '1970-01-01'), p.page_number
         FROM meeting_pages p JOIN meeting_documents d ON d.id = p.document_id
         WHERE d.municipality_id = $1 AND d.document_type = $2",
    )
    .bind(municipality_id)
    .bind(document_type.as_str())
    .fetch_all(autocommit(pool))
    .await?;
    Ok(rows
        .into_iter()
        .filter(|r| !except.contains(r.0.as_str()))
        .map(|(_, meeting, date, page)| crate::transform::page_key(&meeting, date, page))
        .collect())
}

/// Records what a backfill run spent on a job's table (the job's last run).
pub async fn record_backfill_usage(
    pool: &PgPool,
    job_id: i64,
    spent: crate::usage::Spent,
) -> Result<(), sqlx::Error> {
    sql::query(
        "UPDATE backfill_jobs SET mode = 'backfill', source_bytes = $2, source_requests = $3 WHERE id = $1",
    )
    .bind(job_id)
    .bind(spent.bytes as i64)
    .bind(spent.requests as i64)
    .execute(autocommit(pool))
    .await?;
    Ok(())
}

/// Queues a refresh of these jobs (the scheduled `--changed-only` pass of `serve`), as a
/// webhook does.
pub async fn request(pool: &PgPool, ids: &[i64]) -> Result<u64, sqlx::Error> {
    let r = sql::query(
        "UPDATE backfill_jobs SET refresh_requested = refresh_requested + 1,
            refresh_requested_at = coalesce(refresh_requested_at, now()),
            refresh_last_requested_at = now(), refresh_not_before = NULL, updated_at = now()
         WHERE id = ANY($1) AND refresh_requested <= refresh_done",
    )
    .bind(ids)
    .execute(autocommit(pool))
    .await?;
    Ok(r.rows_affected())
}

/// Releases the leases `owner` still holds (a stop that could not wait for a refresh):
/// the jobs pause and stay queued.
pub async fn release_all(pool: &PgPool, owner: &str) -> Result<u64, sqlx::Error> {
    let r = sql::query(
        "UPDATE backfill_jobs SET lease_owner = NULL, lease_expires_at = NULL,
            status = CASE WHEN status = 'running' THEN 'paused' ELSE status END, updated_at = now()
         WHERE lease_owner = $1",
    )
    .bind(owner)
    .execute(autocommit(pool))
    .await?;
    Ok(r.rows_affected())
}
