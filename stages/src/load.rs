//! Load: each page batch goes into PostgreSQL in ONE transaction with its rejects and the
//! job checkpoint, so a crash at any instant resumes from the last committed cursor and
//! re-fetched rows upsert to the same result (exactly-once by construction).
//!
//! Two routes for a batch's pages:
//! - upsert: binary COPY into a temporary staging table (ON COMMIT DROP: no session state
//!   survives the transaction, which keeps PgBouncer's transaction pooling usable), then
//!   set-based upserts of documents and pages that count created / updated / unchanged;
//! - insert: when the job's rows are expected to be new (nothing stored for it yet, or a
//!   resumed pass), the documents are upserted first and the pages are COPYed straight into
//!   `meeting_pages`, which writes each page once instead of twice (about half the
//!   server's work per page, see benches in README). The first unique violation rolls the
//!   batch back and the job continues on the upsert route, so the result is the same.

mod checkpoint;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Acquire, PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::mpsc;
use tracing::{info, instrument, warn};

pub use checkpoint::{Checkpoint, JobCheckpoint};

use crate::batch::{JobKey, PageBatch};
use crate::store::{
    abort_backend, is_transient_sql, pages, rejects, retry_transient, BackendAbort,
};
use crate::watchdog::{Pulse, Stage, Step, Waiting, Watchdog};

/// How the load stage writes.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// The lease owner the checkpoint update must match.
    pub owner: String,
    /// Skip the per-row search-vector trigger for this stage's own transactions.
    pub bulk: bool,
    /// How long to keep retrying a batch through a lost connection or a restarting server.
    pub retry_for: Duration,
    /// The job's rows are expected to be new: COPY them straight into `meeting_pages`
    /// until the first conflict, then upsert (see the module comment).
    pub insert_first: bool,
    /// The insert route's COPY runs with `session_replication_role = replica` (for that
    /// statement only), which skips the two per-row foreign-key checks of `meeting_pages`:
    /// ~20% of the server's COPY work. The document ids come from the same transaction, so
    /// the references hold by construction; a bulk load proves it afterwards with one
    /// set-based query (`store::integrity::dangling_pages`). Only for a role that may set
    /// the parameter (`store::integrity::may_skip_fk_checks`).
    pub skip_fk_checks: bool,
    /// Whose tables the pages go to (`target`): civic-observer's take the upsert route of
    /// `store::observer::pages`, in the same transaction as the rejects and checkpoint.
    pub target: crate::target::Target,
    /// When a batch that makes no progress is aborted and retried (`watchdog`).
    pub watchdog: Watchdog,
}

impl Default for LoadConfig {
    /// No lease owner, trigger mode, every row upserted, foreign keys checked row by row,
    /// retries for [`crate::store::DB_RETRY_FOR`], the default watchdog: a caller names
    /// what differs.
    fn default() -> Self {
        LoadConfig {
            owner: String::new(),
            bulk: false,
            retry_for: crate::store::DB_RETRY_FOR,
            insert_first: false,
            skip_fk_checks: false,
            target: crate::target::Target::default(),
            watchdog: Watchdog::default(),
        }
    }
}

/// What one committed batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub fetched: u64,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub rejected: u64,
}

impl std::ops::AddAssign for BatchOutcome {
    fn add_assign(&mut self, o: Self) {
        self.fetched += o.fetched;
        self.created += o.created;
        self.updated += o.updated;
        self.unchanged += o.unchanged;
        self.rejected += o.rejected;
    }
}

/// Totals of a load stage run.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub totals: BatchOutcome,
    pub batches: u64,
    pub load_time: Duration,
    /// The source said the last batch was the end of the table.
    pub reached_end: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("writing batch {seq} of {job} failed: {source}")]
    Sql {
        job: String,
        seq: i64,
        #[source]
        source: sqlx::Error,
    },
    #[error("{job}: this worker no longer holds the job (its lease expired and another worker took it over, or the job was reset); batch {seq} was not committed")]
    LeaseLost { job: String, seq: i64 },
    #[error("{job}: batch {seq} stalled in {waiting}; its transaction was aborted ({stalls} stalls, the last one left)")]
    Stalled {
        job: String,
        seq: i64,
        waiting: Waiting,
        stalls: u32,
    },
}

/// Called after each committed batch (progress bars, logs).
pub trait LoadObserver: Send + Sync {
    fn batch_committed(&self, job: &JobKey, outcome: &BatchOutcome);

    /// The source counted the job's rows (`job_run`): for progress and ETAs.
    fn job_expected(&self, _job: &JobKey, _rows: u64) {}
}

/// The load stage.
pub struct Load {
    pool: PgPool,
    config: LoadConfig,
    /// Still on the insert route (starts as `config.insert_first`).
    inserting: AtomicBool,
    /// How a committed batch is recorded: the job's cursor (a backfill) unless told.
    checkpoint: Arc<dyn Checkpoint>,
    /// This job's progress, which the watchdog reads.
    pulse: Arc<Pulse>,
}

impl Load {
    pub fn new(pool: PgPool, config: LoadConfig) -> Self {
        Load {
            pool,
            inserting: AtomicBool::new(config.insert_first),
            checkpoint: Arc::new(JobCheckpoint {
                owner: config.owner.clone(),
            }),
            config,
            pulse: Pulse::new(),
        }
    }

    /// Reports progress to `pulse` (shared with the job's other stages) instead of a
    /// pulse of its own.
    pub fn with_pulse(mut self, pulse: Arc<Pulse>) -> Self {
        self.pulse = pulse;
        self
    }

    /// Records batches with `checkpoint` instead of advancing the job's cursor.
    pub fn with_checkpoint(mut self, checkpoint: Arc<dyn Checkpoint>) -> Self {
        self.checkpoint = checkpoint;
        self
    }

    /// Commits batches until the input closes. Ends at the first batch it cannot commit:
    /// everything before it is committed with its checkpoint, nothing after it is.
    #[instrument(skip_all, fields(job = %job))]
    pub async fn run(
        self,
        job: Arc<JobKey>,
        mut input: mpsc::Receiver<PageBatch>,
        observer: Arc<dyn LoadObserver>,
    ) -> Result<LoadReport, LoadError> {
        let mut report = LoadReport::default();
        let mut last_commit = Instant::now();
        while let Some(batch) = input.recv().await {
            let started = Instant::now();
            let elapsed = last_commit.elapsed();
            self.pulse.start(Stage::Load, batch.seq, Step::Begin);
            let committed = self.commit_watched(&batch, elapsed).await;
            self.pulse.idle(Stage::Load);
            let outcome = committed?;
            last_commit = Instant::now();
            report.load_time += started.elapsed();
            report.totals += outcome;
            report.batches += 1;
            report.reached_end |= batch.last;
            observer.batch_committed(&job, &outcome);
        }
        Ok(report)
    }

    /// Commits a batch, retrying it from the checkpoint after a stall (its transaction
    /// was aborted, so nothing of it is committed), up to `max_stalls` stalls.
    async fn commit_watched(
        &self,
        batch: &PageBatch,
        elapsed: Duration,
    ) -> Result<BatchOutcome, LoadError> {
        let mut stalls = 0;
        loop {
            match self.commit_with_retries(batch, elapsed).await {
                Err(LoadError::Stalled { waiting, .. }) => {
                    stalls += 1;
                    let stall = LoadError::Stalled {
                        job: batch.job.to_string(),
                        seq: batch.seq,
                        waiting,
                        stalls,
                    };
                    if stalls >= self.config.watchdog.max_stalls {
                        return Err(stall);
                    }
                    warn!(job = %batch.job, seq = batch.seq, stalls, "{stall}. Retrying the batch from the checkpoint.");
                    self.pulse.start(Stage::Load, batch.seq, Step::Begin);
                }
                other => return other,
            }
        }
    }

    /// Runs one attempt at a batch under the watchdog. When it makes no progress for
    /// `stall_after`, its backend is cancelled from another connection (which ends a
    /// wait on the server: a lock, or a COPY waiting for data), then terminated (which
    /// closes the socket under a client stuck in a read or a write); an attempt that
    /// still does not return is dropped (`Watched::Stalled { abandoned: true }`: its
    /// connection must then be closed, not pooled).
    async fn watched<T>(
        &self,
        batch: &PageBatch,
        attempt: impl std::future::Future<Output = Result<T, LoadError>>,
    ) -> Watched<T> {
        let watchdog = self.config.watchdog;
        tokio::pin!(attempt);
        let waiting = tokio::select! {
            r = &mut attempt => return Watched::Done(r),
            w = self.pulse.stalled(Stage::Load, watchdog.stall_after) => w,
        };
        for how in [BackendAbort::Cancel, BackendAbort::Terminate] {
            if let Some(pid) = self.pulse.backend() {
                if let Err(e) = abort_backend(&self.pool, pid, how).await {
                    warn!(job = %batch.job, pid, error = %e, "Could not abort the stalled batch's backend.");
                }
            }
            match tokio::time::timeout(watchdog.grace, &mut attempt).await {
                // It got through after all (the abort came too late to matter).
                Ok(Ok(v)) => return Watched::Done(Ok(v)),
                Ok(Err(_)) => {
                    self.pulse.set_backend(None);
                    return Watched::Stalled {
                        waiting,
                        abandoned: false,
                    };
                }
                Err(_) => {}
            }
        }
        self.pulse.set_backend(None);
        Watched::Stalled {
            waiting,
            abandoned: true,
        }
    }

    /// The result of a watched attempt; a stall becomes the error that `commit_watched`
    /// counts, and an abandoned attempt's connection is closed, not pooled.
    fn settle<T>(
        watched: Watched<T>,
        batch: &PageBatch,
        conn: &mut sqlx::pool::PoolConnection<Postgres>,
    ) -> Result<T, LoadError> {
        let (waiting, abandoned) = match watched {
            Watched::Done(r) => return r,
            Watched::Stalled { waiting, abandoned } => (waiting, abandoned),
        };
        if abandoned {
            conn.close_on_drop();
        }
        Err(LoadError::Stalled {
            job: batch.job.to_string(),
            seq: batch.seq,
            waiting,
            stalls: 0,
        })
    }

    async fn commit_with_retries(
        &self,
        batch: &PageBatch,
        elapsed: Duration,
    ) -> Result<BatchOutcome, LoadError> {
        retry_transient(
            self.config.retry_for,
            |e| matches!(e, LoadError::Sql { source, .. } if is_transient_sql(source)),
            |attempt, e| warn!(job = %batch.job, seq = batch.seq, attempt, error = %e, "Database unavailable; retrying the batch."),
            || self.commit(batch, elapsed),
        )
        .await
    }

    /// Writes pages and rejects outside the job's batch sequence (repairs): no checkpoint.
    pub async fn commit_unguarded(&self, batch: &PageBatch) -> Result<BatchOutcome, LoadError> {
        let sql_err = sql_error(batch);
        let mut conn = self.pool.acquire().await.map_err(sql_err)?;
        self.pulse.start(Stage::Load, batch.seq, Step::Begin);
        let watched = self
            .watched(batch, async {
                let mut tx = conn.begin().await.map_err(sql_err)?;
                let outcome = self
                    .write(&mut tx, batch, Route::Upsert)
                    .await
                    .map_err(sql_err)?;
                self.pulse.step(Stage::Load, Step::Commit);
                tx.commit().await.map_err(sql_err)?;
                Ok(outcome)
            })
            .await;
        self.pulse.idle(Stage::Load);
        Self::settle(watched, batch, &mut conn)
    }

    /// Writes one batch, its rejects and the checkpoint in one transaction.
    pub async fn commit(
        &self,
        batch: &PageBatch,
        elapsed: Duration,
    ) -> Result<BatchOutcome, LoadError> {
        let sql_err = sql_error(batch);
        let mut conn = self.pool.acquire().await.map_err(sql_err)?;
        let watched = self
            .watched(batch, self.attempt(&mut conn, batch, elapsed))
            .await;
        Self::settle(watched, batch, &mut conn)
    }

    /// One attempt at committing a batch on `conn` (see `commit`).
    async fn attempt(
        &self,
        conn: &mut PgConnection,
        batch: &PageBatch,
        elapsed: Duration,
    ) -> Result<BatchOutcome, LoadError> {
        let job = &batch.job;
        let sql_err = sql_error(batch);
        loop {
            let route = match self.inserting.load(Ordering::Relaxed) {
                true => Route::Insert,
                false => Route::Upsert,
            };
            self.pulse.step(Stage::Load, Step::Begin);
            let mut tx = conn.begin().await.map_err(sql_err)?;
            let outcome = match self
                .write_checkpointed(&mut tx, batch, elapsed, route)
                .await
            {
                Ok(Some(o)) => o,
                Ok(None) => {
                    drop(tx);
                    return self.already_committed(batch).await;
                }
                Err(e) if route == Route::Insert && is_unique_violation(&e) => {
                    // A page of this batch is stored already (a rerun after a kill, a
                    // duplicate page split by a resume): upsert from here on.
                    tx.rollback().await.map_err(sql_err)?;
                    self.inserting.store(false, Ordering::Relaxed);
                    info!(job = %job, seq = batch.seq, "Some pages are stored already; this job continues with upserts.");
                    continue;
                }
                Err(e) => return Err(sql_err(e)),
            };
            self.pulse.step(Stage::Load, Step::Commit);
            tx.commit().await.map_err(sql_err)?;
            self.pulse.set_backend(None);
            return Ok(outcome);
        }
    }

    /// The checkpoint guard refused the batch: either our own earlier attempt did commit
    /// (the COMMIT's answer was lost with the connection), or we lost the lease.
    async fn already_committed(&self, batch: &PageBatch) -> Result<BatchOutcome, LoadError> {
        match self.checkpoint.was_committed(&self.pool, batch).await {
            Ok(true) => Ok(BatchOutcome {
                fetched: batch.fetched as u64,
                ..BatchOutcome::default()
            }),
            Ok(false) => Err(LoadError::LeaseLost {
                job: batch.job.to_string(),
                seq: batch.seq,
            }),
            Err(source) => Err(LoadError::Sql {
                job: batch.job.to_string(),
                seq: batch.seq,
                source,
            }),
        }
    }

    /// Writes the batch, then records it with the checkpoint. Returns None when the
    /// checkpoint's guard refused it (nothing must be committed).
    async fn write_checkpointed(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        batch: &PageBatch,
        elapsed: Duration,
        route: Route,
    ) -> Result<Option<BatchOutcome>, sqlx::Error> {
        let outcome = self.write(tx, batch, route).await?;
        self.pulse.step(Stage::Load, Step::Checkpoint);
        let recorded = self.checkpoint.record(tx, batch, &outcome, elapsed).await?;
        Ok(recorded.then_some(outcome))
    }

    /// Writes a batch's pages and rejects (no checkpoint).
    async fn write(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        batch: &PageBatch,
        route: Route,
    ) -> Result<BatchOutcome, sqlx::Error> {
        // The vectors in this batch come from civicload (stages::tsvector, identical to
        // civicload_page_vector by its differential test): the trigger keeps them, and
        // computes the few civicload left to the server (NULL) as it writes them, bulk
        // or not: cheaper than leaving them to `vectorize`, which rewrites the row.
        let setting = match (batch.vectors.is_some(), self.config.bulk) {
            (true, _) => "civicload.vectors_supplied",
            (false, true) => "civicload.bulk",
            (false, false) => "civicload.unused",
        };
        let pid = pages::begin_batch(tx, setting).await?;
        self.pulse.set_backend(Some(pid));
        let written = self.write_pages(tx, batch, route).await?;
        if !batch.rejects.is_empty() {
            self.pulse.step(Stage::Load, Step::Rejects);
            rejects::insert(tx, &batch.job, &batch.rejects).await?;
        }
        Ok(written.outcome(batch))
    }

    /// Writes a batch's pages where the target keeps them, by `route` in civicload's
    /// own schema (the insert route falls back to upserts in the same transaction when a
    /// document is newer than its snapshot).
    async fn write_pages(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        batch: &PageBatch,
        route: Route,
    ) -> Result<Written, sqlx::Error> {
        if let Some(schema) = self.config.target.observer() {
            let w =
                crate::store::observer::pages::write_batch(tx, schema, batch, &self.pulse).await?;
            return Ok(Written {
                created: w.created,
                updated: w.updated,
                rejected: w.rejected,
            });
        }
        if batch.rows.num_rows() == 0 {
            return Ok(Written::default());
        }
        if route == Route::Insert {
            let inserted =
                pages::insert_batch(tx, batch, self.config.skip_fk_checks, &self.pulse).await?;
            if let Some(created) = inserted {
                return Ok(Written {
                    created,
                    ..Written::default()
                });
            }
        }
        let (created, updated) = pages::upsert_batch(tx, batch, &self.pulse).await?;
        Ok(Written {
            created,
            updated,
            rejected: 0,
        })
    }
}

/// How a batch's pages are written in civicload's own schema (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// COPY straight into `meeting_pages`: the pages are expected to be new.
    Insert,
    /// COPY into a staging table, then upsert.
    Upsert,
}

/// What a batch's page writes did, before the batch's own rejects are counted.
#[derive(Clone, Copy, Debug, Default)]
struct Written {
    created: i64,
    updated: i64,
    /// Rows the target's columns cannot hold (civic-observer), now rejects.
    rejected: i64,
}

impl Written {
    /// The batch's outcome: every page not created, updated or rejected is unchanged.
    fn outcome(self, batch: &PageBatch) -> BatchOutcome {
        let pages = batch.rows.num_rows() as i64;
        BatchOutcome {
            fetched: batch.fetched as u64,
            created: self.created as u64,
            updated: self.updated as u64,
            unchanged: (pages - self.created - self.updated - self.rejected) as u64,
            rejected: (batch.rejects.len() as i64 + self.rejected) as u64,
        }
    }
}

/// Wraps a database error of `batch` (naming its job and sequence number).
fn sql_error(batch: &PageBatch) -> impl Fn(sqlx::Error) -> LoadError + Copy + '_ {
    |source| LoadError::Sql {
        job: batch.job.to_string(),
        seq: batch.seq,
        source,
    }
}

/// How one attempt at a batch ended under the watchdog.
enum Watched<T> {
    Done(Result<T, LoadError>),
    /// It made no progress; `abandoned`: it did not even return after its backend was
    /// terminated, so its connection is in an unknown state.
    Stalled {
        waiting: Waiting,
        abandoned: bool,
    },
}

/// SQLSTATE 23505: a unique constraint refused a row.
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}
