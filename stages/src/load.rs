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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::Date32Type;

use futures::future::BoxFuture;
use sqlx::{Acquire, PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::mpsc;
use tracing::{info, instrument, warn};

use crate::batch::{col, JobKey, PageBatch};
use crate::copy::{CopyRows, RowKey, PAGES_COLUMNS, STAGING_COLUMNS};
use crate::store::sql::{self, autocommit};
use crate::store::{abort_backend, is_transient_sql, retry_transient, BackendAbort};
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
}

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

/// The load stage.
pub struct Load {
    pool: PgPool,
    config: LoadConfig,
    /// Still on the insert route (starts as `config.insert_first`).
    inserting: AtomicBool,
    /// None: the job-cursor checkpoint of a backfill.
    checkpoint: Option<Arc<dyn Checkpoint>>,
    /// This job's progress, which the watchdog reads.
    pulse: Arc<Pulse>,
}

impl Load {
    pub fn new(pool: PgPool, config: LoadConfig) -> Self {
        Load {
            pool,
            inserting: AtomicBool::new(config.insert_first),
            config,
            checkpoint: None,
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
        self.checkpoint = Some(checkpoint);
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
                    .write(&mut tx, batch, Duration::ZERO, false, false)
                    .await
                    .map_err(sql_err)?;
                self.pulse.step(Stage::Load, Step::Commit);
                tx.commit().await.map_err(sql_err)?;
                Ok(outcome.expect("no checkpoint guard without a checkpoint"))
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
            let insert = self.inserting.load(Ordering::Relaxed);
            self.pulse.step(Stage::Load, Step::Begin);
            let mut tx = conn.begin().await.map_err(sql_err)?;
            let outcome = match self.write(&mut tx, batch, elapsed, true, insert).await {
                Ok(Some(o)) => o,
                Ok(None) => {
                    drop(tx);
                    return self.already_committed(batch).await;
                }
                Err(e) if insert && is_unique_violation(&e) => {
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
        if let Some(checkpoint) = &self.checkpoint {
            return match checkpoint.was_committed(&self.pool, batch).await {
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
            };
        }
        let row: Option<(i64, Option<String>)> =
            sql::query_as("SELECT batch_seq, lease_owner FROM backfill_jobs WHERE id = $1")
                .bind(batch.job.job_id)
                .fetch_optional(autocommit(&self.pool))
                .await
                .map_err(|source| LoadError::Sql {
                    job: batch.job.to_string(),
                    seq: batch.seq,
                    source,
                })?;
        match row {
            Some((seq, Some(owner))) if seq == batch.seq && owner == self.config.owner => {
                Ok(BatchOutcome {
                    fetched: batch.fetched as u64,
                    ..BatchOutcome::default()
                })
            }
            _ => Err(LoadError::LeaseLost {
                job: batch.job.to_string(),
                seq: batch.seq,
            }),
        }
    }

    /// Returns None when the checkpoint guard did not match (nothing must be committed).
    async fn write(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        batch: &PageBatch,
        elapsed: Duration,
        checkpoint: bool,
        insert: bool,
    ) -> Result<Option<BatchOutcome>, sqlx::Error> {
        let job = &batch.job;
        let doc_type = job.document_type.as_str();
        // The vectors in this batch come from civicload (stages::tsvector, identical to
        // civicload_page_vector by its differential test): the trigger keeps them, and
        // computes the few civicload left to the server (NULL) as it writes them, bulk
        // or not: cheaper than leaving them to `vectorize`, which rewrites the row.
        // The same round trip names the backend, which the watchdog cancels if the batch
        // stalls.
        let setting = match (batch.vectors.is_some(), self.config.bulk) {
            (true, _) => "civicload.vectors_supplied",
            (false, true) => "civicload.bulk",
            (false, false) => "civicload.unused",
        };
        let pid: i32 = sql::query_scalar("SELECT pg_backend_pid() FROM set_config($1, 'on', true)")
            .bind(setting)
            .fetch_one(&mut **tx)
            .await?;
        self.pulse.set_backend(Some(pid));
        let (mut created, mut updated, mut target_rejected) = (0i64, 0i64, 0i64);
        let pages = batch.rows.num_rows();
        if let Some(schema) = self.config.target.observer() {
            let w =
                crate::store::observer::pages::write_batch(tx, schema, batch, &self.pulse).await?;
            (created, updated, target_rejected) = (w.created, w.updated, w.rejected);
        }
        let own = self.config.target.observer().is_none();
        let inserted = match own && pages > 0 && insert {
            true => insert_pages(tx, batch, self.config.skip_fk_checks, &self.pulse).await?,
            false => None,
        };
        if let Some(n) = inserted {
            created = n;
        } else if own && pages > 0 {
            sql::query(
                "CREATE TEMP TABLE civicload_stage (
                    source_id text, meeting text, meeting_date date, page_number int,
                    text text, page_image text, entities jsonb, votes jsonb, search_vector tsvector
                 ) ON COMMIT DROP",
            )
            .execute(&mut **tx)
            .await?;
            self.pulse.step(Stage::Load, Step::Copy);
            let mut copy = tx
                .copy_in_raw(&format!(
                    "COPY civicload_stage ({STAGING_COLUMNS}) FROM STDIN (FORMAT binary)"
                ))
                .await?;
            let rows = CopyRows::new(&batch.rows, batch.vectors.as_deref(), RowKey::Meeting);
            if let Err(e) = send_rows(&mut copy, &rows, &self.pulse).await {
                let _ = copy.abort("sending the rows failed").await;
                return Err(e);
            }
            copy.finish().await?;
            self.pulse.step(Stage::Load, Step::Upsert);

            sql::query(
                "INSERT INTO meeting_documents (municipality_id, document_type, meeting_name, meeting_date)
                 SELECT DISTINCT $1::bigint, $2::text, meeting, meeting_date FROM civicload_stage
                 ON CONFLICT (municipality_id, document_type, meeting_name, meeting_date) DO NOTHING",
            )
            .bind(job.municipality_id)
            .bind(doc_type)
            .execute(&mut **tx)
            .await?;

            (created, updated) = sql::query_as(
                "WITH written AS (
                    INSERT INTO meeting_pages AS p
                        (document_id, municipality_id, source_id, page_number, text, page_image, entities, votes, search_vector, meeting_date)
                    SELECT d.id, $1, s.source_id, s.page_number, s.text, s.page_image, s.entities, s.votes, s.search_vector, d.meeting_date
                    FROM civicload_stage s
                    JOIN meeting_documents d
                      ON d.municipality_id = $1 AND d.document_type = $2
                     AND d.meeting_name = s.meeting AND d.meeting_date = s.meeting_date
                    -- + municipality_id: the partition key (migration 0010); the document
                    -- determines it, so the same rows conflict as before.
                    ON CONFLICT (document_id, page_number, municipality_id) DO UPDATE SET
                        source_id = EXCLUDED.source_id, text = EXCLUDED.text,
                        page_image = EXCLUDED.page_image, entities = EXCLUDED.entities,
                        votes = EXCLUDED.votes, updated_at = now(),
                        search_vector = CASE WHEN p.text IS DISTINCT FROM EXCLUDED.text
                                             THEN EXCLUDED.search_vector ELSE p.search_vector END
                    WHERE (p.source_id, p.text, p.page_image, p.entities, p.votes)
                          IS DISTINCT FROM
                          (EXCLUDED.source_id, EXCLUDED.text, EXCLUDED.page_image, EXCLUDED.entities, EXCLUDED.votes)
                    -- Not xmax = 0: a partitioned table (migration 0010) cannot return system
                    -- columns. A row this statement inserted has created_at = now() (the
                    -- column default, this transaction's start); an updated one is older.
                    RETURNING (p.created_at = now()) AS created
                 )
                 SELECT count(*) FILTER (WHERE created), count(*) FILTER (WHERE NOT created) FROM written",
            )
            .bind(job.municipality_id)
            .bind(doc_type)
            .fetch_one(&mut **tx)
            .await?;
        }

        if !batch.rejects.is_empty() {
            self.pulse.step(Stage::Load, Step::Rejects);
            let ids: Vec<Option<&str>> = batch
                .rejects
                .iter()
                .map(|r| r.source_id.as_deref())
                .collect();
            let raws: Vec<&str> = batch.rejects.iter().map(|r| r.raw.as_str()).collect();
            let reasons: Vec<&str> = batch.rejects.iter().map(|r| r.reason.as_str()).collect();
            sql::query(
                "INSERT INTO page_rejects (municipality_id, document_type, source_id, raw, reason, job_id)
                 SELECT $1, $2, s, r::jsonb, why, $3 FROM unnest($4::text[], $5::text[], $6::text[]) AS t(s, r, why)
                 ON CONFLICT DO NOTHING",
            )
            .bind(job.municipality_id)
            .bind(doc_type)
            .bind(job.job_id)
            .bind(&ids)
            .bind(&raws)
            .bind(&reasons)
            .execute(&mut **tx)
            .await?;
        }

        let unchanged = pages as i64 - created - updated - target_rejected;
        let rejected = batch.rejects.len() as i64 + target_rejected;
        let outcome = BatchOutcome {
            fetched: batch.fetched as u64,
            created: created as u64,
            updated: updated as u64,
            unchanged: unchanged as u64,
            rejected: rejected as u64,
        };
        if !checkpoint {
            return Ok(Some(outcome));
        }
        self.pulse.step(Stage::Load, Step::Checkpoint);
        if let Some(custom) = &self.checkpoint {
            let recorded = custom.record(tx, batch, &outcome, elapsed).await?;
            return Ok(recorded.then_some(outcome));
        }
        let moved = sql::query(
            "UPDATE backfill_jobs SET
                last_cursor = coalesce($4, last_cursor), batch_seq = $3,
                pages_fetched = pages_fetched + $5, pages_created = pages_created + $6,
                pages_updated = pages_updated + $7, pages_unchanged = pages_unchanged + $8,
                pages_rejected = pages_rejected + $9, elapsed_seconds = elapsed_seconds + $10,
                heartbeat_at = now(), updated_at = now()
             WHERE id = $1 AND lease_owner = $2 AND batch_seq = $3 - 1",
        )
        .bind(job.job_id)
        .bind(&self.config.owner)
        .bind(batch.seq)
        .bind(batch.cursor_after.as_deref())
        .bind(batch.fetched as i64)
        .bind(created)
        .bind(updated)
        .bind(unchanged)
        .bind(rejected)
        .bind(elapsed.as_secs_f64())
        .execute(&mut **tx)
        .await?;
        if moved.rows_affected() != 1 {
            return Ok(None);
        }
        Ok(Some(outcome))
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

/// The insert route: the batch's documents are upserted (returning their ids), then its
/// pages are COPYed straight into `meeting_pages`. Returns the pages created, or None when
/// the batch must take the upsert route instead (in the same transaction). A page that is
/// stored already fails the COPY with a unique violation (the caller upserts instead).
/// With `skip_fk_checks` the COPY alone runs as a replica session: unique indexes, NOT
/// NULL and CHECK constraints still hold, the search-vector trigger still fires (ENABLE
/// ALWAYS, migration 0008), only the foreign-key triggers are skipped.
async fn insert_pages(
    tx: &mut Transaction<'_, Postgres>,
    batch: &PageBatch,
    skip_fk_checks: bool,
    pulse: &Pulse,
) -> Result<Option<i64>, sqlx::Error> {
    pulse.step(Stage::Load, Step::Documents);
    let job = &batch.job;
    let meetings = batch.rows.column(col::MEETING).as_string::<i32>();
    let dates = batch.rows.column(col::DATE).as_primitive::<Date32Type>();
    // The batch's distinct (meeting, date) pairs, in first-seen order.
    let mut ids: HashMap<(&str, i32), Option<i64>> = HashMap::new();
    let (mut names, mut days) = (Vec::new(), Vec::new());
    for i in 0..batch.rows.num_rows() {
        let key = (meetings.value(i), dates.value(i));
        if ids.insert(key, None).is_none() {
            names.push(key.0);
            days.push(key.1);
        }
    }
    // New documents come back from the INSERT; the others from the table (the statement's
    // snapshot does not see its own inserts, so each document comes back exactly once).
    let found: Vec<(i64, String, i32)> = sql::query_as(
        "WITH wanted AS (
            SELECT m, date '1970-01-01' + d AS day FROM unnest($3::text[], $4::int[]) AS t(m, d)
         ), added AS (
            INSERT INTO meeting_documents (municipality_id, document_type, meeting_name, meeting_date)
            SELECT $1, $2, m, day FROM wanted
            ON CONFLICT (municipality_id, document_type, meeting_name, meeting_date) DO NOTHING
            RETURNING id, meeting_name, meeting_date
         )
         SELECT id, meeting_name, meeting_date - date '1970-01-01' FROM added
         UNION ALL
         SELECT d.id, d.meeting_name, d.meeting_date - date '1970-01-01'
         FROM meeting_documents d JOIN wanted w
           ON d.municipality_id = $1 AND d.document_type = $2
          AND d.meeting_name = w.m AND d.meeting_date = w.day",
    )
    .bind(job.municipality_id)
    .bind(job.document_type.as_str())
    .bind(&names)
    .bind(&days)
    .fetch_all(&mut **tx)
    .await?;
    for (id, name, day) in &found {
        if let Some(slot) = ids.get_mut(&(name.as_str(), *day)) {
            *slot = Some(*id);
        }
    }
    let mut document_ids = Vec::with_capacity(batch.rows.num_rows());
    for i in 0..batch.rows.num_rows() {
        match ids[&(meetings.value(i), dates.value(i))] {
            Some(id) => document_ids.push(id),
            // Committed by a transaction newer than this statement's snapshot (a replay
            // beside the backfill): the upsert's join sees it.
            None => return Ok(None),
        }
    }
    if skip_fk_checks {
        sql::query("SET LOCAL session_replication_role = replica")
            .execute(&mut **tx)
            .await?;
    }
    pulse.step(Stage::Load, Step::Copy);
    let mut copy = tx
        .copy_in_raw(&format!(
            "COPY meeting_pages ({PAGES_COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let key = RowKey::Document {
        municipality_id: job.municipality_id,
        document_ids: &document_ids,
    };
    let rows = CopyRows::new(&batch.rows, batch.vectors.as_deref(), key);
    if let Err(e) = send_rows(&mut copy, &rows, pulse).await {
        let _ = copy.abort("sending the rows failed").await;
        return Err(e);
    }
    let copied = copy.finish().await? as i64;
    if skip_fk_checks {
        // The rejects and the checkpoint that follow keep their foreign-key checks.
        sql::query("SET LOCAL session_replication_role = origin")
            .execute(&mut **tx)
            .await?;
    }
    Ok(Some(copied))
}

/// Sends a COPY stream in chunks of about `COPY_CHUNK` bytes, encoding as it goes.
/// Each chunk the server accepted is progress for the watchdog.
pub(crate) async fn send_rows(
    copy: &mut sqlx::postgres::PgCopyIn<&mut PgConnection>,
    rows: &CopyRows<'_>,
    pulse: &Pulse,
) -> Result<(), sqlx::Error> {
    const COPY_CHUNK: usize = 256 * 1024;
    let mut out = bytes::BytesMut::with_capacity(COPY_CHUNK + 16 * 1024);
    rows.header(&mut out);
    for i in 0..rows.len() {
        rows.row(i, &mut out);
        if out.len() >= COPY_CHUNK {
            copy.send(out.split().freeze()).await?;
            pulse.beat(Stage::Load);
        }
    }
    rows.trailer(&mut out);
    copy.send(out.freeze()).await?;
    Ok(())
}
