//! `civicload backfill`: plans the jobs, claims them through the job table, runs each as
//! fetch -> transform -> load tasks joined by bounded channels, reconciles, and reports.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::PgPool;
use stages::job_run::{with_db_retries, JobRun};
use stages::source::SourceClient;
use stages::store::jobs::{self, ClaimOrder, JobRow};
use stages::watchdog::{Pulse, Waiting, Watchdog};
use stages::JobKey;
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
        self.take_over(&ids).await?;
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

        let (results, first_error) = self.run_workers(&ids, &progress).await?;
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

    /// Before the first claim: a fresh pass for jobs completed earlier (unless resuming),
    /// leases of dead local workers cleared, and jobs held by live others named.
    async fn take_over(&self, ids: &[i64]) -> anyhow::Result<()> {
        let ids = ids.to_vec();
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

        Ok(())
    }

    /// `--concurrency` workers take the biggest jobs first; two more take the small ones,
    /// smallest first, meanwhile (see `ClaimOrder`). Returns every job's result and the
    /// first worker error, if any.
    async fn run_workers(
        self: &Arc<Self>,
        ids: &[i64],
        progress: &Arc<Progress>,
    ) -> anyhow::Result<(Vec<JobResult>, Option<anyhow::Error>)> {
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
            let ids = ids.to_vec();
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
        Ok((results, first_error))
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

    /// One job: its run in the library, then its line in the report.
    async fn run_job(&self, row: JobRow, progress: &Arc<Progress>) -> JobResult {
        let job = Arc::new(row.key());
        let pulse = self.pulses.insert(&job);
        progress.job_started(&job, row.pages_fetched as u64);
        let run = self.job_run();
        let end = run.run(&row, pulse, progress.clone()).await;
        self.pulses.remove(job.job_id);
        let result = JobResult::from_end(&job, &row, &end);
        progress.job_finished(&job, &result.one_line());
        result
    }

    /// What every job of this run shares.
    fn job_run(&self) -> JobRun {
        JobRun {
            pool: self.pool.clone(),
            client: self.client.clone(),
            target: self.target.clone(),
            vectors: self.vectors.clone(),
            spool: self.spool.clone(),
            owner: self.owner.clone(),
            bulk: self.args.bulk,
            skip_fk_checks: self.skip_fk_checks,
            watchdog: self.watchdog(),
            cancel: self.cancel.clone(),
        }
    }
}

/// The share of a bulk load's expected pages after which `meeting_pages` is analyzed...
const ANALYZE_BY: f64 = 0.8;
/// ... or from this share on, once the rest of the load should take less than
/// [`ANALYZE_LEAD`] at the pages' rate so far.
const ANALYZE_FROM: f64 = 0.5;
/// About what the ANALYZE takes: 16-22 s at 200k pages, 23 s at 1M on a 2-core machine (its
/// sample stops growing at 300,000 rows a table).
const ANALYZE_LEAD: Duration = Duration::from_secs(20);

/// Runs `ANALYZE meeting_pages` while the last jobs finish: once 80% of the expected pages
/// are committed, or from 50% on when the rest of the load should take less than the
/// ANALYZE itself. ANALYZE cannot run beside the search index build that follows the
/// load (their locks conflict), and with the statistics target of the vectors it takes
/// seconds, so this takes it off the critical path. A short load starts it earlier: at
/// 200k pages started at 80%, it ended 5-7 s after the load, while the index build waited
/// on one core. The statistics then describe 50-80% of the pages; autovacuum re-analyzes
/// once the rest is in (2% changed, see migration 0002).
async fn analyze_near_the_end(
    pool: PgPool,
    progress: Arc<Progress>,
    analyzed: Arc<std::sync::atomic::AtomicBool>,
    stop: CancellationToken,
) {
    let started = Instant::now();
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
        let share = done as f64 / expected as f64;
        let rate = done as f64 / started.elapsed().as_secs_f64().max(1.0);
        let rest = Duration::from_secs_f64(expected.saturating_sub(done) as f64 / rate.max(1.0));
        if share >= ANALYZE_BY || (share >= ANALYZE_FROM && rest <= ANALYZE_LEAD) {
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

/// When this process started: jobs completed after it by other processes belong to the
/// same run and are not restarted.
pub fn process_started() -> chrono::DateTime<chrono::Utc> {
    static STARTED: std::sync::OnceLock<chrono::DateTime<chrono::Utc>> = std::sync::OnceLock::new();
    *STARTED.get_or_init(chrono::Utc::now)
}
