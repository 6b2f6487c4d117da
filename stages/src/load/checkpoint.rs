//! How a committed batch is recorded, inside the batch's own transaction: the one idea
//! behind a backfill's job cursor ([`JobCheckpoint`]) and a replay's loaded files
//! (`replay::FileCheckpoint`). Either guard refuses a batch that is not this worker's
//! next, and then nothing of the batch is committed.

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool};

use super::BatchOutcome;
use crate::batch::PageBatch;
use crate::store::jobs::{self, BatchCounts};

/// How a committed batch is recorded, inside the batch's own transaction. By default
/// (backfill) the job's cursor advances, guarded by the lease and `batch_seq = seq - 1`;
/// an archive replay records the batch's file instead (`replay::FileCheckpoint`).
pub trait Checkpoint: Send + Sync {
    /// Records the batch. Returns false when the guard refuses it: nothing of the batch
    /// may be committed then.
    fn record<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        batch: &'a PageBatch,
        outcome: &'a BatchOutcome,
        elapsed: Duration,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>>;

    /// After a refusal: true when the batch was committed by our own earlier attempt (the
    /// COMMIT's answer was lost with the connection), false when the job is no longer ours.
    fn was_committed<'a>(
        &'a self,
        pool: &'a PgPool,
        batch: &'a PageBatch,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>>;
}

/// A backfill's checkpoint: the job's cursor advances past the batch, guarded by the
/// lease (`owner`) and `batch_seq = seq - 1`.
pub struct JobCheckpoint {
    pub owner: String,
}

impl Checkpoint for JobCheckpoint {
    fn record<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        batch: &'a PageBatch,
        outcome: &'a BatchOutcome,
        elapsed: Duration,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
        let counts = BatchCounts {
            fetched: outcome.fetched as i64,
            created: outcome.created as i64,
            updated: outcome.updated as i64,
            unchanged: outcome.unchanged as i64,
            rejected: outcome.rejected as i64,
        };
        Box::pin(jobs::advance_cursor(
            conn,
            batch.job.job_id,
            &self.owner,
            batch.seq,
            batch.cursor_after.as_deref(),
            counts,
            elapsed,
        ))
    }

    fn was_committed<'a>(
        &'a self,
        pool: &'a PgPool,
        batch: &'a PageBatch,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
        Box::pin(jobs::holds_at(
            pool,
            batch.job.job_id,
            &self.owner,
            batch.seq,
        ))
    }
}
