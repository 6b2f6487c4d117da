//! `civicload backfill`: plans the jobs, claims them through the job table, runs each as
//! fetch -> transform -> load tasks joined by bounded channels, reconciles, and reports.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::PgPool;
use stages::fetch::{Fetch, Transform};
use stages::load::{Load, LoadConfig, LoadObserver};
use stages::reconcile::{reconcile, Verdict};
use stages::source::SourceClient;
use stages::store::jobs::{self, ClaimOrder, JobRow, Outcome};
use stages::store::{is_transient_sql, retry_transient, DB_RETRY_FOR};
use stages::watchdog::{Pulse, Waiting, Watchdog};
use stages::JobKey;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cli::BackfillArgs;
use crate::ui::progress::Progress;
use crate::ui::report::JobResult;

/// Jobs of at most this many pages (two source requests) are small: see `ClaimOrder`.
const SMALL_JOB_PAGES: i64 = 2_000;
/// Workers for small jobs beside `--concurrency`: a small job is a few round trips of
/// latency, not work, and holds a few MB at most.
const SMALL_JOB_WORKERS: usize = 2;

/// Batches in flight between two stages: enough to overlap fetch with load, small enough
/// that memory stays flat (a batch is ~1000 pages, a few MB).
const CHANNEL_CAPACITY: usize = 1;

/// Everything a backfill run needs.
pub struct Backfill {
    /// Computes search vectors in civicload (None: PostgreSQL computes them).
    pub vectors: stages::fetch::SharedVectors,
    pub pool: PgPool,
    pub client: SourceClient,
    pub args: BackfillArgs,
    /// This worker's identity in job leases.
    pub owner: String,
    pub cancel: CancellationToken,
    /// Where batches are spooled as Parquet before they are loaded (`--spool`).
    pub spool: Option<stages::archive::Archive>,
    /// New pages are COPYed without per-row foreign-key checks (`LoadConfig::skip_fk_checks`).
    pub skip_fk_checks: bool,
    /// Whose tables the pages go to.
    pub target: stages::target::Target,
    /// The progress of the jobs running now, for the watchdog, leases and warnings.
    pub pulses: Pulses,
}

/// A job without progress for this long is named in a warning.
const STALL_WARNING_AFTER: Duration = Duration::from_secs(60);

/// A running job and its progress.
type Running = (Arc<JobKey>, Arc<Pulse>);

/// The pulses of the jobs this process runs now.
#[derive(Default)]
pub struct Pulses(std::sync::Mutex<std::collections::HashMap<i64, Running>>);

impl Pulses {
    fn insert(&self, job: &Arc<JobKey>) -> Arc<Pulse> {
        let pulse = Pulse::new();
        self.0
            .lock()
            .expect("pulses lock")
            .insert(job.job_id, (job.clone(), pulse.clone()));
        pulse
    }

    fn remove(&self, job_id: i64) {
        self.0.lock().expect("pulses lock").remove(&job_id);
    }

    /// The running jobs that hold work without progress for at least `after`.
    pub fn waiting_longer_than(&self, after: Duration) -> Vec<(Arc<JobKey>, Waiting)> {
        let jobs = self.0.lock().expect("pulses lock");
        jobs.values()
            .filter_map(|(job, pulse)| pulse.waiting().map(|w| (job.clone(), w)))
            .filter(|(_, w)| w.idle >= after)
            .collect()
    }
}

/// The result of a run: per-job results in the order they finished.
pub struct RunResult {
    pub jobs: Vec<JobResult>,
    pub interrupted: bool,
    pub wall: Duration,
    /// From the start of the run to the last job's end (`wall` adds the wait for an
    /// ANALYZE still running then).
    pub loaded: Duration,
    /// `meeting_pages` was analyzed during the last pages of the load.
    pub pages_analyzed: bool,
}

impl Backfill {
    /// Registers and lists the requested jobs.
    pub async fn plan(&self) -> anyhow::Result<Vec<i64>> {
        crate::plan::plan_jobs(
            &self.pool,
            &self.args.subdomain,
            self.args.document_type.map(Into::into),
        )
        .await
    }

    /// Runs every planned job to an end (completed, failed or paused).
    pub async fn run(self: Arc<Self>, ids: Vec<i64>) -> anyhow::Result<RunResult> {
        let started = Instant::now();
        if !self.args.resume {
            let reset =
                jobs::start_fresh_pass_for_completed(&self.pool, &ids, process_started()).await?;
            if reset > 0 {
                info!(jobs = reset, "Starting a fresh pass for jobs completed earlier (unchanged pages are left untouched).");
            }
        }
        let released = release_dead_local_leases(&self.pool, &ids).await?;
        if released > 0 {
            info!(
                jobs = released,
                "Took over jobs whose worker on this machine is gone."
            );
        }
        for (sub, doc, owner, since) in jobs::held_by_others(&self.pool, &ids, &self.owner).await? {
            warn!("{sub}/{doc} is being loaded by {owner} (last heartbeat {since}); this run will wait for it or take it over if that worker stops renewing its lease.");
        }

        let planned = jobs::list(&self.pool, Some(&ids)).await?;
        let todo = planned
            .iter()
            .filter(|j| j.status != jobs::JobStatus::Completed)
            .count() as u64;
        let expected = jobs::expected_remaining(&self.pool, &ids)
            .await?
            .map(|n| n as u64);
        let progress = Progress::new(todo, expected, Progress::terminal());
        let stop_logging = CancellationToken::new();
        tokio::spawn(
            progress
                .clone()
                .log_periodically(Duration::from_secs(10), stop_logging.clone()),
        );
        let heartbeat = tokio::spawn(heartbeat(self.clone(), stop_logging.clone()));
        tokio::spawn(warn_of_stalls(self.clone(), stop_logging.clone()));

        // A bulk load gathers the planner statistics during its last pages (see
        // `analyze_near_the_end`), so they need not wait for the search index build.
        let analyzed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut analyzing = None;
        if self.args.bulk {
            analyzing = Some(tokio::spawn(analyze_near_the_end(
                self.pool.clone(),
                progress.clone(),
                analyzed.clone(),
                stop_logging.clone(),
            )));
        }

        let mut workers = JoinSet::new();
        let attempted = Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
        // `--concurrency` workers take the biggest jobs first; two more take the small
        // ones, smallest first, meanwhile (see `ClaimOrder`).
        let small = ClaimOrder::SmallestFirst {
            at_most: SMALL_JOB_PAGES,
        };
        let orders = std::iter::repeat_n(ClaimOrder::BiggestFirst, self.args.concurrency.into())
            .chain(std::iter::repeat_n(small, SMALL_JOB_WORKERS));
        for order in orders {
            let me = self.clone();
            let ids = ids.clone();
            let attempted = attempted.clone();
            let progress = progress.clone();
            workers.spawn(async move { me.worker(ids, attempted, progress, order).await });
        }
        let mut results = Vec::new();
        let mut first_error = None;
        while let Some(joined) = workers.join_next().await {
            match joined.context("a backfill worker panicked")? {
                Ok(mut r) => results.append(&mut r),
                Err(e) => {
                    // A worker that cannot reach the job table stops; the others go on.
                    first_error.get_or_insert(e);
                }
            }
        }
        let loaded = started.elapsed();
        stop_logging.cancel();
        let _ = heartbeat.await;
        if let Some(task) = analyzing {
            // Not started: it returns at once. Running: the index build waits for it anyway.
            if self.cancel.is_cancelled() {
                task.abort();
            }
            let _ = task.await;
        }
        progress.finish();
        if let Some(e) = first_error {
            if results.is_empty() {
                return Err(e);
            }
            warn!("A worker stopped early: {}", crate::ui::error::one_line(&e));
        }
        Ok(RunResult {
            jobs: results,
            interrupted: self.cancel.is_cancelled(),
            wall: started.elapsed(),
            loaded,
            pages_analyzed: analyzed.load(std::sync::atomic::Ordering::Relaxed),
        })
    }

    fn lease(&self) -> Duration {
        Duration::from_secs(self.args.lease_seconds.max(5))
    }

    fn watchdog(&self) -> Watchdog {
        Watchdog::after(Duration::from_secs(self.args.stall_timeout))
    }

    async fn worker(
        self: Arc<Self>,
        ids: Vec<i64>,
        attempted: Arc<std::sync::Mutex<Vec<i64>>>,
        progress: Arc<Progress>,
        order: ClaimOrder,
    ) -> anyhow::Result<Vec<JobResult>> {
        let mut results = Vec::new();
        loop {
            if self.cancel.is_cancelled() {
                return Ok(results);
            }
            let skip = attempted.lock().expect("attempted lock").clone();
            let claimed = with_db_retries(|| {
                jobs::claim_next(&self.pool, &ids, &skip, &self.owner, self.lease(), order)
            })
            .await?;
            let Some(job) = claimed else {
                if order != ClaimOrder::BiggestFirst {
                    // No small job left: the others finish the rest.
                    return Ok(results);
                }
                // Nothing claimable: wait while other workers hold jobs of this run, so a
                // dead worker's job is taken over when its lease expires.
                let others = jobs::held_by_others(&self.pool, &ids, &self.owner).await?;
                if others.is_empty() {
                    return Ok(results);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    _ = self.cancel.cancelled() => return Ok(results),
                }
            };
            attempted.lock().expect("attempted lock").push(job.id);
            results.push(self.run_job(job, &progress).await);
        }
    }

    /// One job: the three stages, then the job's end state and verification.
    async fn run_job(&self, row: JobRow, progress: &Arc<Progress>) -> JobResult {
        let job = Arc::new(row.key());
        let pulse = self.pulses.insert(&job);
        let result = self.run_job_stages(row, &job, pulse, progress).await;
        self.pulses.remove(job.job_id);
        result
    }

    async fn run_job_stages(
        &self,
        row: JobRow,
        job: &Arc<JobKey>,
        pulse: Arc<Pulse>,
        progress: &Arc<Progress>,
    ) -> JobResult {
        let started = Instant::now();
        progress.job_started(job, row.pages_fetched as u64);
        // The expected size, for the progress bar and `status` ETA. Most tables are counted
        // by the fetch stage's first request (`columns_and_count`), the others by the next
        // cheapest route. Verification recounts at the end (the source may change
        // meanwhile), except for a table read whole by one request right after its count.
        let (count_tx, count_rx) =
            tokio::sync::oneshot::channel::<Option<stages::source::SourceCount>>();
        let counting = {
            let (client, pool, job, progress) = (
                self.client.clone(),
                self.pool.clone(),
                job.clone(),
                progress.clone(),
            );
            tokio::spawn(async move {
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
                    progress.job_expected(&job, c.rows);
                    let _ = jobs::set_expected(&pool, job.job_id, c.rows as i64, c.route).await;
                }
                first
            })
        };
        // New rows go straight into meeting_pages: a job with nothing stored yet, or a
        // resumed pass (the rows after its cursor are not stored, unless an earlier pass
        // stored them: the first conflict switches the job to upserts).
        let insert_first = self.target.observer().is_none()
            && (row.last_cursor.is_some()
                || jobs::stores_nothing(
                    &self.pool,
                    job.municipality_id,
                    job.document_type.as_str(),
                )
                .await
                .unwrap_or(false));
        let (raw_tx, raw_rx) = mpsc::channel(CHANNEL_CAPACITY);
        let (batch_tx, batch_rx) = mpsc::channel(CHANNEL_CAPACITY);
        let fetch = Fetch {
            client: self.client.clone(),
            start_after: row.last_cursor.clone(),
            last_seq: row.batch_seq,
            count: Some(count_tx),
            pulse: pulse.clone(),
            watchdog: self.watchdog(),
        };
        let load = Load::new(
            self.pool.clone(),
            LoadConfig {
                owner: self.owner.clone(),
                bulk: self.args.bulk,
                insert_first,
                skip_fk_checks: self.skip_fk_checks,
                target: self.target.clone(),
                watchdog: self.watchdog(),
                ..LoadConfig::default()
            },
        )
        .with_pulse(pulse.clone());
        let observer: Arc<dyn LoadObserver> = progress.clone();
        let fetch_task = tokio::spawn(fetch.run(job.clone(), raw_tx, self.cancel.clone()));
        // A resumed pass remembers the pages its rows before the checkpoint hold, so a
        // duplicate of one of them is a reject as in an uninterrupted pass.
        let seen = match &row.last_cursor {
            Some(cursor) => with_db_retries(|| {
                self.target.page_keys_through(&self.pool, job, cursor)
            })
            .await
            .unwrap_or_else(|e| {
                warn!(job = %job, error = %e, "Could not read the pages before the checkpoint; a duplicate page split by the stop may replace the first one.");
                Default::default()
            }),
            None => Default::default(),
        };
        let transform_task = tokio::spawn(
            Transform {
                vectors: self.vectors.clone(),
                seen,
                pulse: pulse.clone(),
            }
            .run(job.clone(), raw_rx, batch_tx),
        );
        // With a spool, transform -> spool -> load: a batch reaches load only once its
        // Parquet file is durable.
        let (batch_rx, spool_task) = match &self.spool {
            Some(archive) => {
                let (spooled_tx, spooled_rx) = mpsc::channel(CHANNEL_CAPACITY);
                let spool = stages::spool::Spool::new(archive.clone(), job.clone(), row.pass)
                    .with_pulse(pulse.clone());
                (
                    spooled_rx,
                    Some(tokio::spawn(spool.run(batch_rx, spooled_tx))),
                )
            }
            None => (batch_rx, None),
        };
        let load_task = tokio::spawn(load.run(job.clone(), batch_rx, observer));

        let load_result = load_task.await;
        let transform_time = transform_task.await.unwrap_or_default();
        let fetch_result = fetch_task.await;
        let first_count = counting.await.ok().flatten();

        let mut result = JobResult::new(job, &row);
        result.transform_time = transform_time;
        let mut read_whole_at_once = false;
        let (mut outcome, mut error): (Outcome, Option<String>) = match (fetch_result, load_result) {
            (_, Err(e)) | (Err(e), _) => (Outcome::Failed, Some(format!("internal error: {e}"))),
            (_, Ok(Err(e))) => (Outcome::Failed, Some(format!("{e}. Fix the database problem, then rerun the same command: the job continues from its last checkpoint."))),
            (Ok(Err(e)), Ok(Ok(load))) => {
                result.absorb(&load);
                (
                    Outcome::Failed,
                    Some(format!(
                        "{job}: {e}. Pages up to the last checkpoint are committed; rerun the same command (or add --resume) to continue from there{}.",
                        if e.is_transient() { " once the source is reachable" } else { "" }
                    )),
                )
            }
            (Ok(Ok(fetch)), Ok(Ok(load))) => {
                result.absorb(&load);
                result.fetch_time = fetch.fetch_time;
                read_whole_at_once = fetch.pages == 1 && row.last_cursor.is_none();
                if fetch.reached_end {
                    (Outcome::Completed, None)
                } else {
                    (Outcome::Paused, None)
                }
            }
        };
        if let Some(task) = spool_task {
            let spool_error = match task.await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(format!("internal error in the spool stage: {e}")),
            };
            if let Some(e) = spool_error {
                outcome = Outcome::Failed;
                error = Some(e);
            }
        }
        // Verify while still holding the lease, then release with the verdict: a kill in
        // between leaves the job running at its final cursor, and a resume re-verifies it.
        let (mut outcome, mut error) = (outcome, error);
        if outcome == Outcome::Completed {
            let verify_started = Instant::now();
            // A table read whole by the one request after its count: that count is as
            // fresh as a recount, and saves the source a request per small table.
            let counted = first_count.filter(|_| read_whole_at_once);
            match reconcile_with_retries(&self.pool, &self.client, &self.target, job, counted).await
            {
                Ok(r) => {
                    if matches!(r.verdict, Verdict::Short { .. }) {
                        outcome = Outcome::Failed;
                        error = Some(r.describe());
                    }
                    result.verified = r.verdict == Verdict::Verified;
                    result.verification = r.describe();
                }
                Err(e) => result.verification = format!("verification failed: {e}"),
            }
            result.verify_time = verify_started.elapsed();
        } else if let Some(e) = &error {
            warn!(job = %job, "Job failed: {e}");
        }
        result.seconds = started.elapsed().as_secs_f64();
        match with_db_retries(|| {
            jobs::release(
                &self.pool,
                job.job_id,
                &self.owner,
                outcome,
                error.as_deref(),
            )
        })
        .await
        {
            Ok(true) => {}
            Ok(false) => {
                warn!(job = %job, "The job's lease was lost before it could be released; another worker holds it.")
            }
            Err(e) => {
                warn!(job = %job, error = %e, "Could not record the job's end; its lease will expire and it can be resumed.")
            }
        }
        result.status = outcome;
        result.error = error;
        progress.job_finished(job, &result.one_line());
        result
    }
}

/// The share of a bulk load's expected pages after which `meeting_pages` is analyzed.
const ANALYZE_AT: f64 = 0.8;

/// Runs `ANALYZE meeting_pages` once 80% of the expected pages are committed, while the
/// last jobs finish. ANALYZE cannot run beside the search index build that follows
/// the load (their locks conflict), and with the statistics target of the vectors it takes
/// seconds (23 s at 1M pages), so this takes it off the critical path. The statistics
/// then describe 80% of the pages; autovacuum re-analyzes once the rest is in (2% changed, see migration 0002).
async fn analyze_near_the_end(
    pool: PgPool,
    progress: Arc<Progress>,
    analyzed: Arc<std::sync::atomic::AtomicBool>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let (done, expected) = progress.pages();
        let Some(expected) = expected.filter(|&n| n > 0) else {
            return;
        };
        if done as f64 >= expected as f64 * ANALYZE_AT {
            break;
        }
    }
    let started = Instant::now();
    match stages::store::maintenance::analyze_pages(&pool).await {
        Ok(()) => {
            analyzed.store(true, std::sync::atomic::Ordering::Relaxed);
            info!(
                seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
                "Analyzed meeting_pages during the last pages of the load."
            );
        }
        Err(e) => {
            warn!(error = %e, "Could not analyze meeting_pages during the load; it is analyzed after it.")
        }
    }
}

/// Renews this worker's leases until stopped, except those of stalled jobs: a lease
/// says the job makes progress, not only that its process lives.
async fn heartbeat(run: Arc<Backfill>, stop: CancellationToken) {
    let lease = run.lease();
    let mut tick = tokio::time::interval(lease / 4);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let stalled: Vec<i64> = run
                    .pulses
                    .waiting_longer_than(run.watchdog().stall_after)
                    .iter()
                    .map(|(job, _)| job.job_id)
                    .collect();
                if let Err(e) = jobs::heartbeat_except(&run.pool, &run.owner, lease, &stalled).await {
                    warn!(error = %e, "Could not renew job leases; retrying.");
                }
            }
            _ = stop.cancelled() => return,
        }
    }
}

/// Names every job without progress for a minute, once per stall, on a terminal and in
/// plain logs alike.
async fn warn_of_stalls(run: Arc<Backfill>, stop: CancellationToken) {
    let mut warned: std::collections::HashMap<i64, Waiting> = Default::default();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let waiting = run.pulses.waiting_longer_than(STALL_WARNING_AFTER);
        warned.retain(|id, _| waiting.iter().any(|(job, _)| job.job_id == *id));
        for (job, w) in waiting {
            let same = warned
                .get(&job.job_id)
                .is_some_and(|seen| (seen.stage, seen.step, seen.seq) == (w.stage, w.step, w.seq));
            if same {
                continue;
            }
            warn!(job = %job, stage = w.stage.as_str(), seq = w.seq, "{job}: no progress for {} s in {w}; the watchdog aborts and retries the batch at {} s.", w.idle.as_secs(), run.args.stall_timeout);
            warned.insert(job.job_id, w);
        }
    }
}

/// Clears leases held by processes of this machine that no longer exist (a `kill -9`),
/// so a resume on the same machine does not wait for the lease to expire.
pub(crate) async fn release_dead_local_leases(pool: &PgPool, ids: &[i64]) -> anyhow::Result<u64> {
    let mut released = 0;
    for row in jobs::list(pool, Some(ids)).await? {
        let Some(owner) = row.lease_owner.as_deref() else {
            continue;
        };
        if stages::store::leases::is_dead_local_process(owner) {
            released += jobs::clear_lease(pool, row.id, owner).await?;
        }
    }
    Ok(released)
}

/// Reconciles a job, retrying through a lost connection or a restarting server.
async fn reconcile_with_retries(
    pool: &PgPool,
    client: &SourceClient,
    target: &stages::target::Target,
    job: &JobKey,
    counted: Option<stages::source::SourceCount>,
) -> Result<stages::reconcile::Reconciliation, stages::reconcile::ReconcileError> {
    retry_transient(
        DB_RETRY_FOR,
        |e| matches!(e, stages::reconcile::ReconcileError::Sql(e) if is_transient_sql(e)),
        |attempt, e| warn!(job = %job, attempt, error = %e, "Database unavailable while verifying; retrying."),
        || reconcile(pool, client, target, job, counted.clone()),
    )
    .await
}

/// Retries a job-table call through a lost connection or a restarting server.
async fn with_db_retries<T, F, Fut>(f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let on_retry =
        |attempt, e: &sqlx::Error| warn!(attempt, error = %e, "Database unavailable; retrying.");
    Ok(retry_transient(DB_RETRY_FOR, is_transient_sql, on_retry, f).await?)
}

/// When this process started: jobs completed after it by other processes belong to the
/// same run and are not restarted.
pub fn process_started() -> chrono::DateTime<chrono::Utc> {
    static STARTED: std::sync::OnceLock<chrono::DateTime<chrono::Utc>> = std::sync::OnceLock::new();
    *STARTED.get_or_init(chrono::Utc::now)
}
