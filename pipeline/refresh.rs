//! `civicload refresh`: brings jobs to exact equality with the source while moving as
//! little as possible (stages/src/refresh.rs), claiming them through the job table like a
//! backfill. Also the piece `serve` runs for each queued or scheduled refresh.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, CellAlignment, Table};
use sqlx::PgPool;
use stages::refresh::{refresh_job, RefreshError, RefreshOptions, RefreshReport};
use stages::source::SourceClient;
use stages::store::jobs;
use stages::store::refresh::{self as queue, Claimed, RunRecord, RunStatus, Trigger};
use stages::target::Target;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cli::{check_template, Cli, RefreshArgs};
use crate::db::connect_target;
use crate::exit::{UsageError, EXIT_INCOMPLETE, EXIT_OK};

/// What one refresh of one job ended with.
#[derive(Clone, Debug)]
pub struct Finished {
    pub job: String,
    pub status: RunStatus,
    pub report: RefreshReport,
    pub error: Option<String>,
    pub seconds: f64,
    /// The oldest webhook it served, and when it was verified.
    pub requested_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Runs one claimed job's refresh and ends its claim with the outcome.
pub async fn run_claimed(
    pool: &PgPool,
    client: &SourceClient,
    claimed: &Claimed,
    opts: &RefreshOptions,
    cancel: &CancellationToken,
) -> Finished {
    let started = Instant::now();
    let job = Arc::new(claimed.job.key());
    let key = stages::usage::table_key(&job.subdomain, job.document_type.table());
    let before = client.usage().table(&key);
    let result = refresh_job(pool, client, &job, claimed.job.batch_seq, opts, cancel).await;
    let (status, report, error) = match result {
        Ok(r) if r.verified => (RunStatus::Verified, r, None),
        Ok(r) => {
            let e = Some(r.verification.clone());
            (RunStatus::Unverified, r, e)
        }
        Err(RefreshError::Cancelled { .. }) => (RunStatus::Paused, RefreshReport::default(), None),
        Err(e) => (
            RunStatus::Failed,
            RefreshReport::default(),
            Some(format!("{e}")),
        ),
    };
    // Also what a refresh that failed midway spent.
    let spent = client.usage().table(&key) - before;
    let record = RunRecord {
        id_route: report.route.map(|r| r.as_str()),
        fetched: report.loaded.fetched,
        created: report.loaded.created,
        updated: report.loaded.updated,
        deleted: report.deleted,
        bytes: spent.bytes,
        requests: spent.requests,
        error: error.clone(),
    };
    match queue::finish(pool, claimed, &opts.owner, status, &record).await {
        Ok(true) => {}
        Ok(false) => {
            warn!(job = %job, "The job's lease was lost before the refresh could end it; another worker holds it.")
        }
        Err(e) => {
            warn!(job = %job, error = %e, "Could not record the refresh's end; its lease will expire and the refresh is retried.")
        }
    }
    if let Some(e) = &error {
        warn!(job = %job, "Refresh not verified: {e}");
    }
    Finished {
        job: job.to_string(),
        status,
        report,
        error,
        seconds: started.elapsed().as_secs_f64(),
        requested_at: claimed.requested_at,
    }
}

/// Everything a refresh run needs.
pub struct Refresher {
    pub pool: PgPool,
    pub client: SourceClient,
    pub opts: RefreshOptions,
    pub lease: Duration,
    pub cancel: CancellationToken,
}

impl Refresher {
    /// Refreshes every job of `ids` once, `concurrency` at a time; waits for jobs other
    /// workers hold, then refreshes them too.
    pub async fn run(
        self: Arc<Self>,
        ids: Vec<i64>,
        concurrency: usize,
        trigger: Trigger,
    ) -> anyhow::Result<Vec<Finished>> {
        let attempted = Arc::new(tokio::sync::Mutex::new(Vec::<i64>::new()));
        let mut workers = JoinSet::new();
        for _ in 0..concurrency.max(1) {
            let (me, ids, attempted) = (self.clone(), ids.clone(), attempted.clone());
            workers.spawn(async move { me.worker(ids, attempted, trigger).await });
        }
        let mut done = Vec::new();
        while let Some(joined) = workers.join_next().await {
            done.extend(joined.context("a refresh worker panicked")??);
        }
        Ok(done)
    }

    async fn worker(
        &self,
        ids: Vec<i64>,
        attempted: Arc<tokio::sync::Mutex<Vec<i64>>>,
        trigger: Trigger,
    ) -> anyhow::Result<Vec<Finished>> {
        let mut done = Vec::new();
        while !self.cancel.is_cancelled() {
            // Claims one at a time, each recorded before the next: a job another worker
            // just finished (its lease free again) is not claimed a second time.
            let mut guard = attempted.lock().await;
            let skip = guard.clone();
            let claimed = queue::claim_next(
                &self.pool,
                &ids,
                &skip,
                &self.opts.owner,
                self.lease,
                trigger,
            )
            .await?;
            if let Some(c) = &claimed {
                guard.push(c.job.id);
            }
            drop(guard);
            let Some(claimed) = claimed else {
                let left: Vec<i64> = ids.iter().filter(|i| !skip.contains(i)).copied().collect();
                if left.is_empty()
                    || jobs::held_by_others(&self.pool, &left, &self.opts.owner)
                        .await?
                        .is_empty()
                {
                    return Ok(done);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = self.cancel.cancelled() => return Ok(done),
                }
            };
            done.push(
                run_claimed(&self.pool, &self.client, &claimed, &self.opts, &self.cancel).await,
            );
        }
        Ok(done)
    }
}

/// Renews this worker's job leases until stopped.
pub async fn heartbeat(pool: PgPool, owner: String, lease: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(lease / 4);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = jobs::heartbeat(&pool, &owner, lease).await {
                    warn!(error = %e, "Could not renew job leases; retrying.");
                }
            }
            _ = stop.cancelled() => return,
        }
    }
}

/// The jobs a refresh covers: the requested ones, or with `changed_only` (after syncing
/// the municipality list when a sites source is given) those whose municipality changed
/// since their last verification.
pub async fn plan(
    cli: &Cli,
    pool: &PgPool,
    subdomains: &[String],
    document_type: Option<stages::DocumentType>,
    changed_only: bool,
    sites: Option<&str>,
) -> anyhow::Result<Vec<i64>> {
    if changed_only {
        match sites {
            Some(from) => {
                crate::commands::municipalities::sync(cli, from).await?;
            }
            None => info!("No --sites given: --changed-only compares with the municipality list as last synced or updated by webhooks."),
        }
    }
    let ids = crate::plan::plan_jobs(pool, subdomains, document_type)
        .await
        .map_err(|e| UsageError(format!("{e:#}")))?;
    if !changed_only {
        return Ok(ids);
    }
    let changed = queue::changed(pool, &ids).await?;
    info!(
        jobs = ids.len(),
        changed = changed.len(),
        "Refreshing only the jobs whose municipality changed since it was last verified."
    );
    Ok(changed)
}

pub fn options(
    owner: String,
    max_delete_percent: f64,
    force: bool,
    target: &Target,
) -> RefreshOptions {
    RefreshOptions {
        owner,
        max_delete_share: max_delete_percent / 100.0,
        force,
        target: target.clone(),
    }
}

/// Before refreshing civic-observer's tables: every municipality civicload knows has its
/// row in `municipalities_muni` (the pages' documents hang from it).
pub async fn prepare_target(pool: &PgPool, target: &Target) -> anyhow::Result<()> {
    if target.observer().is_some() {
        stages::store::observer::municipalities::ensure_known(pool).await?;
    }
    Ok(())
}

/// `civicload refresh`.
pub async fn command(cli: &Cli, args: &RefreshArgs) -> anyhow::Result<u8> {
    check_template(&cli.source_url).map_err(UsageError)?;
    let client = SourceClient::new(cli.source_config(args.http_timeout, args.max_retries, 1000))
        .context("building the HTTP client")?;
    let concurrency = usize::from(args.concurrency);
    let (pool, target) = connect_target(cli, args.concurrency as u32 * 2 + 3).await?;
    let started = Instant::now();
    let ids = plan(
        cli,
        &pool,
        &args.subdomain,
        args.document_type.map(Into::into),
        args.changed_only,
        args.sites.as_deref(),
    )
    .await?;
    prepare_target(&pool, &target).await?;
    let released = queue::release_dead_local(&pool).await?;
    if released > 0 {
        info!(
            jobs = released,
            "Took over jobs whose worker on this machine is gone."
        );
    }
    let cancel = CancellationToken::new();
    let owner = stages::store::leases::owner_id();
    let signals = crate::shutdown::on_signal(
        cancel.clone(),
        "no new refresh batches",
        Some(crate::shutdown::Leases {
            pool: pool.clone(),
            owner: owner.clone(),
        }),
    );
    let lease = Duration::from_secs(args.lease_seconds.max(5));
    let stop = CancellationToken::new();
    let beat = tokio::spawn(heartbeat(pool.clone(), owner.clone(), lease, stop.clone()));
    let refresher = Arc::new(Refresher {
        pool: pool.clone(),
        client: client.clone(),
        opts: options(owner, args.max_delete_percent, args.force, &target),
        lease,
        cancel: cancel.clone(),
    });
    let done = refresher
        .run(ids.clone(), concurrency, Trigger::Command)
        .await;
    stop.cancel();
    let _ = beat.await;
    signals.abort();
    let done = done?;
    // civic-observer's tables have no meeting_page_stats (its statistics are the
    // application's, `civicload maintain` analyzes them).
    if target.observer().is_none()
        && done
            .iter()
            .any(|f| f.report.loaded.created + f.report.loaded.updated + f.report.deleted > 0)
    {
        if let Err(e) = jobs::refresh_stats(&pool).await {
            warn!(error = %e, "Could not refresh meeting_page_stats; `civicload maintain` refreshes it.");
        }
    }
    crate::outln!("{}", table(&done));
    let total = client.usage().total();
    crate::outln!(
        "{} jobs refreshed in {:.1} s: {} requests, {} bytes from the source.",
        done.len(),
        started.elapsed().as_secs_f64(),
        total.requests,
        total.bytes
    );
    if cancel.is_cancelled() {
        crate::outln!("Stopped: committed batches stay; run the same command again to finish.");
        return Ok(EXIT_INCOMPLETE);
    }
    let all = done.len() == ids.len() && done.iter().all(|f| f.status == RunStatus::Verified);
    Ok(if all { EXIT_OK } else { EXIT_INCOMPLETE })
}

fn right(v: impl ToString) -> Cell {
    Cell::new(v.to_string()).set_alignment(CellAlignment::Right)
}

/// The summary table of a refresh.
pub fn table(done: &[Finished]) -> String {
    let mut rows: Vec<&Finished> = done.iter().collect();
    rows.sort_by(|a, b| a.job.cmp(&b.job));
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "job",
        "status",
        "id route",
        "source rows",
        "fetched",
        "created",
        "updated",
        "deleted",
        "requests",
        "bytes",
        "s",
        "verification",
    ]);
    for f in rows {
        let r = &f.report;
        t.add_row(vec![
            Cell::new(&f.job),
            Cell::new(f.status.as_str()),
            Cell::new(r.route.map(|r| r.as_str()).unwrap_or("-")),
            right(r.source_rows),
            right(r.loaded.fetched),
            right(r.loaded.created),
            right(r.loaded.updated),
            right(r.deleted),
            right(r.spent.requests),
            right(r.spent.bytes),
            right(format!("{:.1}", f.seconds)),
            Cell::new(f.error.as_deref().unwrap_or(&r.verification)),
        ]);
    }
    t.to_string()
}

/// Records on each job what this backfill run spent reading its table (mode `backfill`).
pub async fn record_backfill_usage(pool: &PgPool, client: &SourceClient, ids: &[i64]) {
    let rows = match jobs::list(pool, Some(ids)).await {
        Ok(rows) => rows,
        Err(e) => {
            warn!(error = %e, "Could not record what the backfill spent per job.");
            return;
        }
    };
    for row in rows {
        let key = row.key();
        let spent = client.usage().table(&stages::usage::table_key(
            &key.subdomain,
            key.document_type.table(),
        ));
        if spent.requests == 0 {
            continue;
        }
        if let Err(e) = queue::record_backfill_usage(pool, row.id, spent).await {
            warn!(error = %e, job = %key, "Could not record what the backfill spent.");
        }
    }
}
