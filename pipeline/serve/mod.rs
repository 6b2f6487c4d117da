//! `civicload serve`: civic.band's webhook, scheduled `--changed-only` refreshes,
//! `/healthz` and `/metrics`, on axum.
//!
//! The queue is the job table (stages/src/store/refresh.rs): a webhook is answered 2xx
//! only once its refresh request is committed, and workers claim queued jobs with
//! `FOR UPDATE SKIP LOCKED` and a lease, so any number of processes share the work and a
//! `kill -9` loses nothing. SIGTERM: new webhooks get 503, workers commit the batch in
//! hand and release their jobs (which stay queued), and the process exits 0 within 30 s.

pub mod metrics;
pub mod routes;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use stages::source::SourceClient;
use stages::store::refresh as queue;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cli::{check_template, Cli, ServeArgs};
use crate::db::connect;
use crate::exit::{UsageError, EXIT_OK};
use crate::refresh::{options, run_claimed};

/// The environment variable that holds the webhook's shared secret.
pub const SECRET_ENV: &str = "CIVICLOAD_WEBHOOK_SECRET";
/// How long a stop waits for the refreshes in hand before releasing their jobs.
const DRAIN_FOR: Duration = Duration::from_secs(25);
/// How often an idle worker looks at the queue (a webhook of this process wakes it at once).
const POLL_EVERY: Duration = Duration::from_secs(1);

/// What the routes and workers share.
pub struct App {
    pub pool: PgPool,
    pub client: SourceClient,
    /// SHA-256 of the webhook secret (the secret itself is not kept).
    pub secret_digest: Vec<u8>,
    pub metrics: metrics::Metrics,
    /// Set on SIGTERM: webhooks get 503.
    pub draining: AtomicBool,
    /// Wakes idle workers when a webhook queued something.
    pub wake: Notify,
    pub workers: usize,
    pub workers_alive: AtomicUsize,
}

/// `civicload serve`.
pub async fn command(cli: &Cli, args: &ServeArgs) -> anyhow::Result<u8> {
    let secret = std::env::var(SECRET_ENV).unwrap_or_default();
    if secret.trim().is_empty() {
        return Err(UsageError(format!(
            "serve needs the webhook's shared secret in {SECRET_ENV} (civic.band sends it as `Authorization: Bearer <secret>`); refusing to start without it"
        ))
        .into());
    }
    check_template(&cli.source_url).map_err(UsageError)?;
    let client = SourceClient::new(cli.source_config(args.http_timeout, args.max_retries, 1000))
        .context("building the HTTP client")?;
    let pool = connect(cli, u32::from(args.concurrency) * 2 + 4).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| UsageError(format!("cannot listen on {}: {e}", args.listen)))?;
    use sha2::Digest;
    let app = Arc::new(App {
        pool: pool.clone(),
        client,
        secret_digest: sha2::Sha256::digest(secret.trim().as_bytes()).to_vec(),
        metrics: metrics::Metrics::default(),
        draining: AtomicBool::new(false),
        wake: Notify::new(),
        workers: usize::from(args.concurrency),
        workers_alive: AtomicUsize::new(0),
    });
    drop(secret);
    let owner = stages::store::leases::owner_id();
    let lease = Duration::from_secs(args.lease_seconds.max(5));
    let cancel = CancellationToken::new();
    let released = queue::release_dead_local(&pool).await?;
    if released > 0 {
        info!(
            jobs = released,
            "Took over jobs whose worker on this machine is gone."
        );
    }
    let beat_stop = CancellationToken::new();
    let beat = tokio::spawn(crate::refresh::heartbeat(
        pool.clone(),
        owner.clone(),
        lease,
        beat_stop.clone(),
    ));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..app.workers {
        let (app, owner, cancel) = (app.clone(), owner.clone(), cancel.clone());
        let opts = options(owner, args.max_delete_percent, false);
        workers.spawn(async move { worker(app, opts, lease, cancel).await });
    }
    let http_stop = CancellationToken::new();
    let server = {
        let stop = http_stop.clone();
        let router = routes::router(app.clone());
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        })
    };
    info!(listen = %args.listen, workers = app.workers, "Serving civic.band's webhook, /healthz and /metrics.");
    // Housekeeping runs in this task (the sites sync need not be Send) until a signal.
    tokio::select! {
        _ = wait_for_signal() => {}
        _ = housekeeping(cli, &app, args) => {}
    }
    warn!("Stopping: new webhooks get 503; committing the batches in hand and releasing the jobs.");
    app.draining.store(true, Ordering::Relaxed);
    cancel.cancel();
    let drained = tokio::time::timeout(DRAIN_FOR, async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            "Refreshes still running after {DRAIN_FOR:?}: releasing their jobs (they stay queued)."
        );
        workers.abort_all();
    }
    beat_stop.cancel();
    let _ = beat.await;
    match queue::release_all(&pool, &owner).await {
        Ok(0) => {}
        Ok(n) => info!(jobs = n, "Released the jobs still held; they stay queued."),
        Err(e) => error!(error = %e, "Could not release the jobs still held; their leases expire."),
    }
    http_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(3), server).await;
    info!("Stopped.");
    Ok(EXIT_OK)
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

/// Claims queued jobs and refreshes them until stopped.
async fn worker(
    app: Arc<App>,
    opts: stages::refresh::RefreshOptions,
    lease: Duration,
    cancel: CancellationToken,
) {
    app.workers_alive.fetch_add(1, Ordering::Relaxed);
    while !cancel.is_cancelled() {
        let claimed = match queue::claim_queued(&app.pool, &opts.owner, lease).await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "Could not read the refresh queue; retrying.");
                None
            }
        };
        let Some(claimed) = claimed else {
            tokio::select! {
                _ = tokio::time::sleep(POLL_EVERY) => {}
                _ = app.wake.notified() => {}
                _ = cancel.cancelled() => {}
            }
            continue;
        };
        let done = run_claimed(&app.pool, &app.client, &claimed, &opts, &cancel).await;
        app.metrics.refresh_finished(&done);
        if done.status == queue::RunStatus::Verified {
            if let Some(at) = done.requested_at {
                let seconds = (chrono::Utc::now() - at).num_milliseconds() as f64 / 1000.0;
                app.metrics.observe_latency(seconds.max(0.0));
            }
        }
    }
    app.workers_alive.fetch_sub(1, Ordering::Relaxed);
}

/// Every 10 s: takes over the jobs of dead local workers. Every `--refresh-every`: syncs
/// the municipality list and queues a refresh of the municipalities that changed.
async fn housekeeping(cli: &Cli, app: &App, args: &ServeArgs) {
    let mut tidy = tokio::time::interval(Duration::from_secs(10));
    let mut next_schedule = args.refresh_every.map(|p| tokio::time::Instant::now() + p);
    loop {
        let until_schedule = async {
            match next_schedule {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tidy.tick() => {
                if let Err(e) = queue::release_dead_local(&app.pool).await {
                    warn!(error = %e, "Could not look for jobs of dead workers.");
                }
            }
            _ = until_schedule => {
                next_schedule = args.refresh_every.map(|p| tokio::time::Instant::now() + p);
                if let Err(e) = scheduled(cli, app, args).await {
                    warn!("The scheduled refresh could not be queued: {e:#}");
                }
            }
        }
    }
}

/// The scheduled pass: `refresh --subdomain all --changed-only`, through the queue.
async fn scheduled(cli: &Cli, app: &App, args: &ServeArgs) -> anyhow::Result<()> {
    let all = vec!["all".to_string()];
    let ids = crate::refresh::plan(cli, &app.pool, &all, None, true, args.sites.as_deref()).await?;
    let queued = queue::request(&app.pool, &ids).await?;
    info!(
        changed = ids.len(),
        queued, "Scheduled refresh: queued the municipalities that changed."
    );
    app.wake.notify_waiters();
    Ok(())
}
