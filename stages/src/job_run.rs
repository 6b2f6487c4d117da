//! One job's run, whatever the command: fetch -> transform -> [spool] -> load, joined by
//! bounded channels, then reconcile against the source and release the job with its
//! verdict. `backfill` runs one per claimed job; the binary only renders what it returns.
//!
//! ```text
//!  source ──fetch──▶ raw pages ──transform──▶ PageBatch ──[spool: Parquet]──▶ load ──▶ PostgreSQL
//!                                                                              │ (one transaction:
//!                                                                              │  pages, rejects,
//!                                                                              │  checkpoint)
//!                                            reconcile (exact count) ◀─────────┘
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::archive::Archive;
use crate::batch::JobKey;
use crate::fetch::{Fetch, FetchReport, SharedVectors, Transform};
use crate::load::{Load, LoadConfig, LoadError, LoadObserver, LoadReport};
use crate::reconcile::{reconcile, ReconcileError, Reconciliation, Verdict};
use crate::source::{SourceClient, SourceCount, SourceError};
use crate::store::jobs::{self, JobRow, Outcome};
use crate::store::{is_transient_sql, retry_transient, DB_RETRY_FOR};
use crate::target::Target;
use crate::watchdog::{Pulse, Watchdog};

/// Batches in flight between two stages: enough to overlap fetch with load, small enough
/// that memory stays flat (a batch is ~1000 pages, a few MB).
const CHANNEL_CAPACITY: usize = 1;

/// What every job of a run shares.
#[derive(Clone)]
pub struct JobRun {
    pub pool: PgPool,
    pub client: SourceClient,
    /// Whose tables the pages go to.
    pub target: Target,
    /// Computes search vectors in civicload (none: PostgreSQL computes them).
    pub vectors: SharedVectors,
    /// Where batches are spooled as Parquet before they are loaded.
    pub spool: Option<Archive>,
    /// This worker's identity in job leases.
    pub owner: String,
    /// A bulk load (see `LoadConfig::bulk`).
    pub bulk: bool,
    /// New pages are COPYed without per-row foreign-key checks (`LoadConfig::skip_fk_checks`).
    pub skip_fk_checks: bool,
    pub watchdog: Watchdog,
    pub cancel: CancellationToken,
}

/// Why a job did not complete, as it arose; the binary adds what the user can do.
#[derive(Debug, thiserror::Error)]
pub enum JobFailure {
    /// A stage's task panicked.
    #[error("internal error: {0}")]
    Internal(String),
    /// The database refused or lost a batch; pages up to the last checkpoint are committed.
    #[error("{0}")]
    Load(LoadError),
    /// The source failed; pages up to the last checkpoint are committed.
    #[error("{job}: {error}")]
    Fetch { job: String, error: SourceError },
    /// A batch could not be made durable in the spool.
    #[error("{0}")]
    Spool(String),
    /// The job read the whole table, but fewer pages are held than the source counts.
    #[error("{0}")]
    Short(String),
}

/// How one job ended.
#[derive(Debug)]
pub struct JobEnd {
    pub outcome: Outcome,
    pub failure: Option<JobFailure>,
    /// The load stage's totals (none when it failed).
    pub load: Option<LoadReport>,
    pub fetch_time: Duration,
    pub transform_time: Duration,
    pub verify_time: Duration,
    /// The verification of a completed job: its verdict, or why it could not be checked.
    pub verification: Option<Result<Reconciliation, ReconcileError>>,
    pub seconds: f64,
}

impl JobEnd {
    pub fn verified(&self) -> bool {
        matches!(&self.verification, Some(Ok(r)) if r.verdict == Verdict::Verified)
    }
}

/// The stages' results, before verification.
struct Stages {
    load: Result<Result<LoadReport, LoadError>, tokio::task::JoinError>,
    fetch: Result<Result<FetchReport, SourceError>, tokio::task::JoinError>,
    transform_time: Duration,
    spool: Option<Result<(), String>>,
    first_count: Option<SourceCount>,
}

impl JobRun {
    /// Runs a claimed job to its end and releases it with the verdict. A kill at any
    /// instant leaves the job at its last checkpoint (see `load`).
    pub async fn run(
        &self,
        row: &JobRow,
        pulse: Arc<Pulse>,
        observer: Arc<dyn LoadObserver>,
    ) -> JobEnd {
        let started = Instant::now();
        let job = Arc::new(row.key());
        let stages = self.run_stages(row, &job, pulse, observer).await;
        let read_whole_at_once =
            matches!(&stages.fetch, Ok(Ok(f)) if f.pages == 1) && row.last_cursor.is_none();
        let mut end = Self::judge(&job, stages.load, stages.fetch, stages.transform_time);
        if let Some(Err(e)) = stages.spool {
            end.outcome = Outcome::Failed;
            end.failure = Some(JobFailure::Spool(e));
        }
        // Verify while still holding the lease, then release with the verdict: a kill in
        // between leaves the job running at its final cursor, and a resume re-verifies it.
        if end.outcome == Outcome::Completed {
            // A table read whole by the one request after its count: that count is as
            // fresh as a recount, and saves the source a request per small table.
            let counted = stages.first_count.filter(|_| read_whole_at_once);
            self.verify(&job, counted, &mut end).await;
        } else if let Some(e) = &end.failure {
            warn!(job = %job, "Job failed: {e}");
        }
        end.seconds = started.elapsed().as_secs_f64();
        self.release(&job, &end).await;
        end
    }

    /// Starts the stages, joined by bounded channels, and waits for all of them.
    async fn run_stages(
        &self,
        row: &JobRow,
        job: &Arc<JobKey>,
        pulse: Arc<Pulse>,
        observer: Arc<dyn LoadObserver>,
    ) -> Stages {
        let (count_tx, counting) = self.count_in_background(job, observer.clone());
        let (raw_tx, raw_rx) = mpsc::channel(CHANNEL_CAPACITY);
        let (batch_tx, batch_rx) = mpsc::channel(CHANNEL_CAPACITY);
        let fetch = Fetch {
            client: self.client.clone(),
            start_after: row.last_cursor.clone(),
            last_seq: row.batch_seq,
            count: Some(count_tx),
            pulse: pulse.clone(),
            watchdog: self.watchdog,
        };
        let load = Load::new(self.pool.clone(), self.load_config(row, job).await)
            .with_pulse(pulse.clone());
        let fetch_task = tokio::spawn(fetch.run(job.clone(), raw_tx, self.cancel.clone()));
        let transform = Transform {
            vectors: self.vectors.clone(),
            seen: self.keys_before_checkpoint(row, job).await,
            pulse: pulse.clone(),
        };
        let transform_task = tokio::spawn(transform.run(job.clone(), raw_rx, batch_tx));
        // With a spool, transform -> spool -> load: a batch reaches load only once its
        // Parquet file is durable.
        let (batch_rx, spool_task) = match &self.spool {
            Some(archive) => {
                let (spooled_tx, spooled_rx) = mpsc::channel(CHANNEL_CAPACITY);
                let spool = crate::spool::Spool::new(archive.clone(), job.clone(), row.pass)
                    .with_pulse(pulse);
                (
                    spooled_rx,
                    Some(tokio::spawn(spool.run(batch_rx, spooled_tx))),
                )
            }
            None => (batch_rx, None),
        };
        let load = tokio::spawn(load.run(job.clone(), batch_rx, observer)).await;
        let transform_time = transform_task.await.unwrap_or_default();
        let fetch = fetch_task.await;
        let first_count = counting.await.ok().flatten();
        let spool = match spool_task {
            None => None,
            Some(task) => Some(match task.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("internal error in the spool stage: {e}")),
            }),
        };
        Stages {
            load,
            fetch,
            transform_time,
            spool,
            first_count,
        }
    }

    /// The expected size, for progress and `status`'s ETA. Most tables are counted by the
    /// fetch stage's first request (`columns_and_count`), the others by the next cheapest
    /// route. Verification recounts at the end (the source may change meanwhile), except
    /// for a table read whole by one request right after its count. Returns the sender the
    /// fetch stage answers on, and the task, which yields the fetch stage's own count.
    fn count_in_background(
        &self,
        job: &Arc<JobKey>,
        observer: Arc<dyn LoadObserver>,
    ) -> (
        oneshot::Sender<Option<SourceCount>>,
        JoinHandle<Option<SourceCount>>,
    ) {
        let (count_tx, count_rx) = oneshot::channel::<Option<SourceCount>>();
        let (client, pool, job) = (self.client.clone(), self.pool.clone(), job.clone());
        let task = tokio::spawn(async move {
            let (counted, first) = match count_rx.await {
                // The fetch stage stopped before it asked: its error is reported.
                Err(_) => return None,
                Ok(Some(c)) => (Some(c.clone()), Some(c)),
                Ok(None) => (
                    client
                        .cheap_count(&job.subdomain, job.document_type.table(), false)
                        .await,
                    None,
                ),
            };
            if let Some(c) = counted {
                observer.job_expected(&job, c.rows);
                let _ = jobs::set_expected(&pool, job.job_id, c.rows as i64, c.route).await;
            }
            first
        });
        (count_tx, task)
    }

    /// How this job's batches are written. New rows go straight into meeting_pages: a job
    /// with nothing stored yet, or a resumed pass (the rows after its cursor are not
    /// stored, unless an earlier pass stored them: the first conflict switches the job to
    /// upserts).
    async fn load_config(&self, row: &JobRow, job: &JobKey) -> LoadConfig {
        let insert_first = self.target.observer().is_none()
            && (row.last_cursor.is_some()
                || jobs::stores_nothing(
                    &self.pool,
                    job.municipality_id,
                    job.document_type.as_str(),
                )
                .await
                .unwrap_or(false));
        LoadConfig {
            owner: self.owner.clone(),
            bulk: self.bulk,
            insert_first,
            skip_fk_checks: self.skip_fk_checks,
            target: self.target.clone(),
            watchdog: self.watchdog,
            ..LoadConfig::default()
        }
    }

    /// A resumed pass remembers the pages its rows before the checkpoint hold, so a
    /// duplicate of one of them is a reject as in an uninterrupted pass.
    async fn keys_before_checkpoint(
        &self,
        row: &JobRow,
        job: &JobKey,
    ) -> std::collections::HashSet<u64> {
        let Some(cursor) = &row.last_cursor else {
            return Default::default();
        };
        with_db_retries(|| self.target.page_keys_through(&self.pool, job, cursor))
            .await
            .unwrap_or_else(|e| {
                warn!(job = %job, error = %e, "Could not read the pages before the checkpoint; a duplicate page split by the stop may replace the first one.");
                Default::default()
            })
    }

    /// The job's outcome from its stages' results: completed when the source said the
    /// table ended, paused when the run was stopped first, failed otherwise.
    fn judge(
        job: &JobKey,
        load: Result<Result<LoadReport, LoadError>, tokio::task::JoinError>,
        fetch: Result<Result<FetchReport, SourceError>, tokio::task::JoinError>,
        transform_time: Duration,
    ) -> JobEnd {
        let mut end = JobEnd {
            outcome: Outcome::Failed,
            failure: None,
            load: None,
            fetch_time: Duration::ZERO,
            transform_time,
            verify_time: Duration::ZERO,
            verification: None,
            seconds: 0.0,
        };
        match (fetch, load) {
            (_, Err(e)) | (Err(e), _) => end.failure = Some(JobFailure::Internal(e.to_string())),
            (_, Ok(Err(e))) => end.failure = Some(JobFailure::Load(e)),
            (Ok(Err(error)), Ok(Ok(load))) => {
                end.load = Some(load);
                end.failure = Some(JobFailure::Fetch {
                    job: job.to_string(),
                    error,
                });
            }
            (Ok(Ok(fetch)), Ok(Ok(load))) => {
                end.load = Some(load);
                end.fetch_time = fetch.fetch_time;
                end.outcome = match fetch.reached_end {
                    true => Outcome::Completed,
                    false => Outcome::Paused,
                };
            }
        }
        end
    }

    /// Reconciles a completed job; a short count fails it.
    async fn verify(&self, job: &JobKey, counted: Option<SourceCount>, end: &mut JobEnd) {
        let started = Instant::now();
        let checked = retry_transient(
            DB_RETRY_FOR,
            |e| matches!(e, ReconcileError::Sql(e) if is_transient_sql(e)),
            |attempt, e| warn!(job = %job, attempt, error = %e, "Database unavailable while verifying; retrying."),
            || reconcile(&self.pool, &self.client, &self.target, job, counted.clone()),
        )
        .await;
        if let Ok(r) = &checked {
            if matches!(r.verdict, Verdict::Short { .. }) {
                end.outcome = Outcome::Failed;
                end.failure = Some(JobFailure::Short(r.describe()));
            }
        }
        end.verification = Some(checked);
        end.verify_time = started.elapsed();
    }

    /// Records the job's end and gives up its lease (a failure to is logged: the lease
    /// expires, and the job can be resumed).
    async fn release(&self, job: &JobKey, end: &JobEnd) {
        let error = end.failure.as_ref().map(|f| f.to_string());
        let released = with_db_retries(|| {
            jobs::release(
                &self.pool,
                job.job_id,
                &self.owner,
                end.outcome,
                error.as_deref(),
            )
        })
        .await;
        match released {
            Ok(true) => {}
            Ok(false) => {
                warn!(job = %job, "The job's lease was lost before it could be released; another worker holds it.")
            }
            Err(e) => {
                warn!(job = %job, error = %e, "Could not record the job's end; its lease will expire and it can be resumed.")
            }
        }
    }
}

/// Retries a job-table call through a lost connection or a restarting server.
pub async fn with_db_retries<T, F, Fut>(f: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let on_retry =
        |attempt, e: &sqlx::Error| warn!(attempt, error = %e, "Database unavailable; retrying.");
    retry_transient(DB_RETRY_FOR, is_transient_sql, on_retry, f).await
}
