//! `civicload vectorize`: builds the search vectors a bulk load left NULL, in batches over
//! the rows that still need one, on several connections at once.
//!
//! Resumable by construction: the work list is "rows whose vector IS NULL" (a partial
//! index keeps finding them cheap), every batch commits on its own and re-checks NULL, so
//! a killed run leaves only finished batches behind and the next run picks up the rest.
//!
//! Bloat: each UPDATE writes a new version of the row and leaves the old one dead (no HOT
//! update is possible: the partial index's predicate names the vector column). Left alone,
//! the heap of `meeting_pages` doubles. A plain VACUUM after every `vacuum_every_percent`
//! of the rows turns the dead versions into free space that the next chunk's new versions
//! fill, so the heap ends about one chunk larger than it would have been had the vectors
//! been written by the load itself (measured in the report: heap and total sizes before
//! and after).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures::TryStreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use stages::store::maintenance::{self, RelSizes};
use stages::store::search::{self, SearchError, VectorTarget};
use stages::store::{retry_transient, DB_RETRY_FOR};
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument, warn};

/// From this many missing vectors on, a present search index collects entries in its
/// pending list while vectorize runs (below it, the per-row cost is small).
const RELAX_INDEX_FROM: i64 = 100;

/// `civicload vectorize` flags.
#[derive(Debug, Args, Clone)]
pub struct VectorizeArgs {
    /// Rows per UPDATE; each batch is its own transaction.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// Connections building vectors at once (default: this machine's CPUs, at most 8).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub connections: Option<u16>,
    /// VACUUM the table each time this percentage of its rows has been rewritten, so the
    /// dead row versions are reused instead of growing the table (0: only at the end).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub vacuum_every_percent: u8,
}

impl Default for VectorizeArgs {
    fn default() -> Self {
        VectorizeArgs {
            batch_size: 500,
            connections: None,
            vacuum_every_percent: 5,
        }
    }
}

impl VectorizeArgs {
    fn connections(&self) -> usize {
        self.connections.map(usize::from).unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .clamp(1, 8)
        })
    }
}

/// What one target (pages or meeting names) took.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TargetReport {
    pub target: &'static str,
    pub missing_before: i64,
    pub updated: u64,
    pub missing_after: i64,
    pub passes: u32,
    pub vacuums: u32,
    pub seconds: f64,
    pub vacuum_seconds: f64,
}

/// What a vectorize run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VectorizeReport {
    pub targets: Vec<TargetReport>,
    pub pages_before: RelSizes,
    pub pages_after: RelSizes,
    pub seconds: f64,
    pub interrupted: bool,
}

impl VectorizeReport {
    /// Page vectors written by this run.
    pub fn pages_updated(&self) -> u64 {
        self.targets
            .iter()
            .filter(|t| t.target == VectorTarget::Pages.noun())
            .map(|t| t.updated)
            .sum()
    }

    /// Lines for the end of a run.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for t in &self.targets {
            if t.missing_before == 0 {
                s.push_str(&format!("No {} lacked a vector.\n", t.target));
                continue;
            }
            let rate = if t.seconds > 0.0 {
                t.updated as f64 / t.seconds
            } else {
                0.0
            };
            s.push_str(&format!(
                "Vectorized {} {} in {:.1} s ({:.0}/s, {} pass{}, {} VACUUM{} taking {:.1} s); {} left without a vector.\n",
                t.updated,
                t.target,
                t.seconds,
                rate,
                t.passes,
                if t.passes == 1 { "" } else { "es" },
                t.vacuums,
                if t.vacuums == 1 { "" } else { "s" },
                t.vacuum_seconds,
                t.missing_after
            ));
        }
        let (b, a) = (&self.pages_before, &self.pages_after);
        s.push_str(&format!(
            "meeting_pages size: heap {} -> {}, with TOAST {} -> {}, indexes {} -> {}, total {} -> {}.",
            bytes(b.heap),
            bytes(a.heap),
            bytes(b.table),
            bytes(a.table),
            bytes(b.indexes),
            bytes(a.indexes),
            bytes(b.total),
            bytes(a.total)
        ));
        if self.interrupted {
            s.push_str("\nStopped before the end: run `civicload vectorize` again to finish (finished batches are kept).");
        }
        s
    }
}

/// Human-readable byte size.
pub fn bytes(n: i64) -> String {
    let n = n as f64;
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n:.0} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// The vectorize step, built from its flags.
pub struct Vectorize {
    pub args: VectorizeArgs,
    /// VACUUM (ANALYZE) the tables at the end (a standalone run); `backfill` leaves this to
    /// its maintenance step, which does the same for every table.
    pub final_vacuum: bool,
    pub cancel: CancellationToken,
}

/// How one target's rows are walked: workers, whether batches flush their statistics,
/// rows per chunk between VACUUMs, rows per batch.
#[derive(Clone, Copy, Debug)]
struct Walk {
    connections: usize,
    flush_stats: bool,
    chunk: u64,
    batch: u64,
}

impl Vectorize {
    /// Opens its own pool (one connection per worker, plus one that lists ids and runs
    /// VACUUM) and builds every missing vector.
    pub async fn run(self, options: &PgConnectOptions) -> anyhow::Result<VectorizeReport> {
        let connections = self.args.connections();
        // Session settings only. synchronous_commit off: a crash can lose the last few
        // committed batches, which merely leaves their vectors NULL for the next run.
        // statement_timeout 0: an application role may carry one. A transaction-pooling
        // PgBouncer refuses session settings: each batch sets both for its own
        // transaction anyway (`search::vectorize_ids`); only the VACUUMs lose them.
        let options = options.clone().application_name("civicload vectorize");
        let pool_options = || {
            PgPoolOptions::new()
                .max_connections(connections as u32 + 2)
                .acquire_timeout(Duration::from_secs(120))
        };
        let pool = match pool_options()
            .connect_with(
                options
                    .clone()
                    .options([("synchronous_commit", "off"), ("statement_timeout", "0")]),
            )
            .await
        {
            Err(e) if stages::store::refuses_session_settings(&e) => {
                pool_options().connect_with(options).await
            }
            other => other,
        }
        .context("connecting for vectorize")?;
        let result = self.run_on(&pool, connections).await;
        // Closing the pool ends the sessions, which also publishes their statistics.
        pool.close().await;
        result
    }

    async fn run_on(&self, pool: &PgPool, connections: usize) -> anyhow::Result<VectorizeReport> {
        let started = Instant::now();
        let mut report = VectorizeReport {
            pages_before: maintenance::rel_sizes(pool, "meeting_pages").await?,
            ..Default::default()
        };
        let flush_stats = search::server_version(pool).await? >= 150_000;
        for target in VectorTarget::ALL {
            if self.cancel.is_cancelled() {
                break;
            }
            let t = self
                .run_target(pool, target, connections, flush_stats)
                .await?;
            report.targets.push(t);
        }
        report.interrupted = self.cancel.is_cancelled();
        if self.final_vacuum && !report.interrupted {
            let mut conn = pool.acquire().await?;
            for t in &report.targets {
                if t.updated > 0 {
                    let table = match t.target {
                        x if x == VectorTarget::Pages.noun() => "meeting_pages",
                        _ => "meeting_documents",
                    };
                    info!(table, "VACUUM (ANALYZE) after vectorize.");
                    maintenance::vacuum(&mut conn, table, true, maintenance::Toast::Included)
                        .await?;
                }
            }
        }
        report.pages_after = maintenance::rel_sizes(pool, "meeting_pages").await?;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    #[instrument(skip_all, fields(table = target.table()))]
    async fn run_target(
        &self,
        pool: &PgPool,
        target: VectorTarget,
        connections: usize,
        flush_stats: bool,
    ) -> anyhow::Result<TargetReport> {
        let started = Instant::now();
        let missing = search::missing_count(pool, target).await?;
        let mut report = TargetReport {
            target: target.noun(),
            missing_before: missing,
            ..Default::default()
        };
        if missing == 0 {
            return Ok(report);
        }
        info!(
            table = target.table(),
            rows = missing,
            connections,
            "Building {} vectors.",
            target.noun()
        );
        let (chunk, batch) = self
            .chunk_and_batch(pool, target, missing, connections)
            .await?;
        let walk = Walk {
            connections,
            flush_stats,
            chunk,
            batch,
        };
        // A mass update with the search index present: let it collect entries in its
        // pending list meanwhile (see `relax_fastupdate`), and switch back at the end, even
        // after an error. Killed in between, `maintain` switches it back.
        let relaxed = missing >= RELAX_INDEX_FROM
            && stages::store::search_index::relax_fastupdate(pool, target.index()).await?;
        let progress = VectorizeProgress::new(target, missing as u64);
        let result = self
            .passes(pool, target, walk, &progress, &mut report)
            .await;
        progress.finish();
        if relaxed {
            let restored =
                stages::store::search_index::restore_fastupdate_off(pool, target.index()).await;
            result?;
            restored?;
        } else {
            result?;
        }
        report.missing_after = search::missing_count(pool, target).await?;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Chunks between VACUUMs, relative to the table so the bloat bound is a fraction.
    /// Batches are small enough that a chunk is many of them on every connection: what
    /// sits in flight when a chunk ends is what its VACUUM cannot reclaim yet. Returns
    /// (rows per chunk, rows per batch).
    async fn chunk_and_batch(
        &self,
        pool: &PgPool,
        target: VectorTarget,
        missing: i64,
        connections: usize,
    ) -> anyhow::Result<(u64, u64)> {
        let table_rows = maintenance::estimated_rows(pool, target.table())
            .await?
            .max(missing) as u64;
        Ok(match self.args.vacuum_every_percent {
            0 => (u64::MAX, u64::from(self.args.batch_size)),
            p => {
                let chunk = (table_rows * u64::from(p) / 100).max(1);
                let batch =
                    (chunk / (4 * connections as u64)).clamp(1, u64::from(self.args.batch_size));
                (chunk, batch)
            }
        })
    }

    /// Passes over the rows missing a vector until a pass writes none, none are left
    /// (rows written behind the cursor by a concurrent bulk load need another pass), or
    /// the run is cancelled. Counts passes and rows in `report`.
    async fn passes(
        &self,
        pool: &PgPool,
        target: VectorTarget,
        walk: Walk,
        progress: &VectorizeProgress,
        report: &mut TargetReport,
    ) -> anyhow::Result<()> {
        loop {
            report.passes += 1;
            let updated_in_pass = self.one_pass(pool, target, walk, progress, report).await?;
            report.updated += updated_in_pass;
            if self.cancel.is_cancelled() || updated_in_pass == 0 {
                break;
            }
            // Rows written behind our cursor by a concurrent bulk load: another pass.
            if search::missing_count(pool, target).await? == 0 {
                break;
            }
        }
        Ok(())
    }

    /// One keyset walk over the rows missing a vector, chunk after chunk, with a VACUUM
    /// (unless busy) between chunks when `--vacuum-every-percent` asks for them (counted
    /// in `report`). Returns the rows written.
    async fn one_pass(
        &self,
        pool: &PgPool,
        target: VectorTarget,
        walk: Walk,
        progress: &VectorizeProgress,
        report: &mut TargetReport,
    ) -> anyhow::Result<u64> {
        let mut after = 0i64;
        let mut updated_in_pass = 0u64;
        loop {
            let (updated, last, exhausted) = self
                .one_chunk(
                    pool,
                    target,
                    walk.connections,
                    walk.flush_stats,
                    progress,
                    after,
                    walk.chunk,
                    walk.batch,
                )
                .await?;
            updated_in_pass += updated;
            after = last;
            if self.args.vacuum_every_percent > 0 && updated > 0 && !exhausted {
                let t = Instant::now();
                let mut conn = pool.acquire().await?;
                maintenance::vacuum_unless_busy(&mut conn, target.table()).await?;
                report.vacuums += 1;
                report.vacuum_seconds += t.elapsed().as_secs_f64();
                progress.note_vacuum();
            }
            if exhausted || self.cancel.is_cancelled() {
                break;
            }
        }
        Ok(updated_in_pass)
    }

    /// One chunk of a keyset walk over the rows still missing a vector: batches of ids
    /// after `after`, until `chunk` ids were listed, all finished (nothing left in flight)
    /// when it returns. Returns (rows written, last id listed, no rows left after it).
    #[allow(clippy::too_many_arguments)]
    async fn one_chunk(
        &self,
        pool: &PgPool,
        target: VectorTarget,
        connections: usize,
        flush_stats: bool,
        progress: &VectorizeProgress,
        after: i64,
        chunk: u64,
        batch: u64,
    ) -> anyhow::Result<(u64, i64, bool)> {
        let cancel = self.cancel.clone();
        let lister = pool.clone();
        let last = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(after));
        let exhausted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (last_w, exhausted_w) = (last.clone(), exhausted.clone());
        // The id lister runs ahead of the updates by at most `connections` batches:
        // `try_buffer_unordered` polls it only when a worker slot is free.
        let ids = futures::stream::try_unfold((after, 0u64), move |(after, listed)| {
            let pool = lister.clone();
            let cancel = cancel.clone();
            let (last, exhausted) = (last_w.clone(), exhausted_w.clone());
            async move {
                if cancel.is_cancelled() || listed >= chunk {
                    return Ok::<_, anyhow::Error>(None);
                }
                let want = batch.min(chunk - listed) as i64;
                let ids = search::next_missing_ids(&pool, target, after, want).await?;
                if (ids.len() as i64) < want {
                    exhausted.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                let Some(&max) = ids.last() else {
                    return Ok(None);
                };
                last.store(max, std::sync::atomic::Ordering::Relaxed);
                let n = ids.len() as u64;
                Ok(Some((ids, (max, listed + n))))
            }
        });
        let updates = ids
            .map_ok(|ids| {
                let pool = pool.clone();
                async move { update_with_retries(&pool, target, ids, flush_stats).await }
            })
            .try_buffer_unordered(connections);
        let mut updates = std::pin::pin!(updates);
        let mut updated = 0u64;
        while let Some(n) = updates.try_next().await? {
            updated += n;
            progress.add(n);
        }
        Ok((
            updated,
            last.load(std::sync::atomic::Ordering::Relaxed),
            exhausted.load(std::sync::atomic::Ordering::Relaxed),
        ))
    }
}

/// One batch, retried through a lost connection or a restarting server (the UPDATE is
/// idempotent, so a retry after an unseen commit writes nothing).
async fn update_with_retries(
    pool: &PgPool,
    target: VectorTarget,
    ids: Vec<i64>,
    flush_stats: bool,
) -> anyhow::Result<u64> {
    let on_retry = |attempt, e: &SearchError| warn!(attempt, error = %e, "Database unavailable; retrying the batch.");
    let batch = || async {
        let mut conn = pool.acquire().await.map_err(|cause| SearchError::Sql {
            step: "connecting",
            object: target.table(),
            advice: "Check the database, then rerun `civicload vectorize`.",
            cause,
        })?;
        search::vectorize_ids(&mut conn, target, &ids, flush_stats).await
    };
    Ok(retry_transient(DB_RETRY_FOR, SearchError::is_transient, on_retry, batch).await?)
}

/// A bar on a terminal, a log line every 10 s otherwise.
struct VectorizeProgress {
    bar: Option<ProgressBar>,
    target: VectorTarget,
    total: u64,
    done: std::sync::atomic::AtomicU64,
    started: Instant,
    last_log: std::sync::Mutex<Instant>,
}

impl VectorizeProgress {
    fn new(target: VectorTarget, total: u64) -> Arc<Self> {
        let bar = crate::ui::term::stderr_is_interactive().then(|| {
            // In a MultiProgress only so that log lines are drawn above it (`ui::log`).
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
            crate::ui::log::set_bars(Some(multi.clone()));
            let bar = multi.add(ProgressBar::new(total)).with_style(
                ProgressStyle::with_template(
                    "{prefix:>14} [{bar:30}] {human_pos}/{human_len} {per_sec} eta {eta} {msg}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            bar.set_prefix(target.noun());
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Arc::new(VectorizeProgress {
            bar,
            target,
            total,
            done: Default::default(),
            started: Instant::now(),
            last_log: std::sync::Mutex::new(Instant::now()),
        })
    }

    fn add(&self, n: u64) {
        use std::sync::atomic::Ordering;
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(bar) = &self.bar {
            bar.inc(n);
            return;
        }
        let mut last = self.last_log.lock().expect("progress lock");
        if last.elapsed() >= Duration::from_secs(10) {
            *last = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(0.001);
            let rate = done as f64 / secs;
            let eta = if rate > 0.0 && self.total > done {
                format!(", eta {:.0} s", (self.total - done) as f64 / rate)
            } else {
                String::new()
            };
            info!(
                "Vectorize progress: {done}/{} {} in {secs:.0} s ({rate:.0}/s{eta}).",
                self.total,
                self.target.noun()
            );
        }
    }

    fn note_vacuum(&self) {
        if let Some(bar) = &self.bar {
            bar.set_message("(vacuumed)");
        } else {
            info!(table = self.target.table(), "VACUUM between chunks done.");
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
            crate::ui::log::set_bars(None);
        }
    }
}
