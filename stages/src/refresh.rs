//! Refresh: one job brought to exact equality with the source while moving as little as
//! possible. The source's id set is read with ids only (`source_ids`), compared with the
//! ids held; only the ids not held are fetched (by `id__in`, 100 at a time), a re-OCR'd
//! page (new id, same meeting, date and page) is replaced in place by the load's upsert,
//! and pages whose id is gone upstream are removed, guarded like `verify --repair`.
//!
//! Exactly-once like a backfill: each fetched batch commits with the job's checkpoint
//! (counters, `batch_seq`, guarded by the lease) through the same `Load` stage. A kill at
//! any instant leaves whole batches; the next refresh compares the id sets again and so
//! fetches only what is still missing: nothing is fetched twice, nothing is skipped.
//! The end is verified exact: the ids held plus rejects equal the source's id set.
//!
//! Whose tables it reads and writes is `RefreshOptions::target` (the one seam of
//! `target.rs`): the ids held, the load, the removals and the verification all ask it. In
//! civic-observer's tables a re-OCR carries notebook entries to the new page (in the
//! batch's transaction), and a page gone upstream that notebook entries reference is kept,
//! recorded and reported, not removed: verification counts it as kept.

use crate::target::Target;
use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument};

use crate::batch::{JobKey, PageBatch};
use crate::load::{BatchOutcome, Load, LoadConfig, LoadError, LoadObserver};
use crate::reconcile::{compare_ids, reconcile, ReconcileError, Verdict};
use crate::source::{SourceClient, SourceCount, SourceError};
use crate::source_ids::IdRoute;
use crate::store::{jobs, refresh as store};
use crate::transform::PageBuilder;
use crate::usage::{table_key, Spent};

/// Ids per `id__in` request (they travel in the URL).
pub const IDS_PER_REQUEST: usize = 100;
/// `id__in` requests in flight for one job.
const REQUESTS_IN_FLIGHT: usize = 4;
/// Stale ids per delete transaction.
const DELETE_CHUNK: usize = 5_000;

/// How a refresh may change the pages held.
#[derive(Clone, Debug)]
pub struct RefreshOptions {
    /// The lease owner the checkpoints must match.
    pub owner: String,
    /// The largest share of a job's pages it removes without `force`.
    pub max_delete_share: f64,
    pub force: bool,
    /// Whose tables (civicload's own schema or civic-observer's).
    pub target: Target,
}

/// What one refresh did.
#[derive(Clone, Debug, Default)]
pub struct RefreshReport {
    pub route: Option<IdRoute>,
    /// Source rows (the table's exact count).
    pub source_rows: u64,
    /// Ids the source has that were neither held nor rejected.
    pub missing: usize,
    pub loaded: BatchOutcome,
    pub deleted: u64,
    /// Pages gone upstream kept because notebook entries reference them: (id, entries).
    pub kept: Vec<(String, i64)>,
    pub verified: bool,
    pub verification: String,
    /// What the source cost this job.
    pub spent: Spent,
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{job}: PostgreSQL failed: {source}")]
    Sql {
        job: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    #[error("{job}: {stale} of {stored} stored pages ({percent:.1}%) no longer exist upstream, more than the safe {max:.0}%; nothing was deleted. If the source really lost them, rerun with --force (or raise --max-delete-percent)")]
    TooManyDeletes {
        job: String,
        stale: usize,
        stored: usize,
        percent: f64,
        max: f64,
    },
    #[error(
        "{job}: stopped before the end; the committed batches stay, the next refresh continues"
    )]
    Cancelled { job: String },
}

impl RefreshError {
    /// Worth another try later (the source or the database was unavailable).
    pub fn is_transient(&self) -> bool {
        match self {
            RefreshError::Source(e) => {
                e.is_transient() || matches!(e, SourceError::RetriesExhausted { .. })
            }
            RefreshError::Sql { .. } | RefreshError::Load(_) => true,
            _ => false,
        }
    }
}

struct Quiet;
impl LoadObserver for Quiet {
    fn batch_committed(&self, _: &JobKey, _: &BatchOutcome) {}
}

/// Refreshes one job whose lease `opts.owner` holds (claimed with `store::refresh`).
#[instrument(skip_all, fields(job = %job))]
pub async fn refresh_job(
    pool: &PgPool,
    client: &SourceClient,
    job: &Arc<JobKey>,
    batch_seq: i64,
    opts: &RefreshOptions,
    cancel: &CancellationToken,
) -> Result<RefreshReport, RefreshError> {
    let table = job.document_type.table();
    let key = table_key(&job.subdomain, table);
    let before = client.usage().table(&key);
    let sql_err = |source| RefreshError::Sql {
        job: job.to_string(),
        source,
    };
    let source = client.id_set(&job.subdomain, table).await?;
    let mut report = RefreshReport {
        route: Some(source.route),
        source_rows: source.rows,
        ..RefreshReport::default()
    };
    let (m, d) = (job.municipality_id, job.document_type);
    let target = &opts.target;
    let stored = target.stored_ids(pool, job).await.map_err(sql_err)?;
    let rejected = jobs::rejected_source_ids(pool, m, d)
        .await
        .map_err(sql_err)?;
    let diff = compare_ids(&source.ids, &stored, &rejected);
    report.missing = diff.missing.len();
    if !diff.missing.is_empty() {
        let stale: HashSet<&str> = diff.stale.iter().map(String::as_str).collect();
        let seen = target
            .page_keys_except(pool, job, &stale)
            .await
            .map_err(sql_err)?;
        // The columns to ask for (they differ between municipalities).
        let info = client.table_info(&job.subdomain, table).await?;
        report.loaded = fetch_missing(
            pool,
            client,
            job,
            (&info.wanted, &diff.missing),
            seen,
            batch_seq,
            opts,
            cancel,
        )
        .await?;
    }
    let source_set: HashSet<&str> = source.ids.iter().map(String::as_str).collect();
    // Nothing fetched: the ids held are still those just read.
    let stored = match diff.missing.is_empty() {
        true => stored,
        false => target.stored_ids(pool, job).await.map_err(sql_err)?,
    };
    (report.deleted, report.kept) = remove_stale(pool, job, &source_set, &stored, opts).await?;
    // Rejects of rows gone upstream would count as rows the source still has.
    let gone: Vec<String> = rejected
        .iter()
        .filter(|r| !source_set.contains(r.as_str()))
        .cloned()
        .collect();
    if !gone.is_empty() {
        store::delete_rejects(pool, m, d, &gone)
            .await
            .map_err(sql_err)?;
    }
    // Exact: the ids held plus the rejects are the source's id set, and the rows
    // (with those without an id) its count.
    let mut deep = if diff.missing.is_empty() && report.deleted == 0 && gone.is_empty() {
        diff
    } else {
        let now_stored = target.stored_ids(pool, job).await.map_err(sql_err)?;
        let now_rejected = jobs::rejected_source_ids(pool, m, d)
            .await
            .map_err(sql_err)?;
        compare_ids(&source.ids, &now_stored, &now_rejected)
    };
    deep.kept = report.kept.clone();
    let counted = SourceCount {
        rows: source.rows,
        route: source.route.as_str(),
    };
    let r = reconcile(pool, client, target, job, Some(counted)).await?;
    report.verified = deep.is_exact() && r.verdict == Verdict::Verified;
    report.verification = if deep.is_exact() {
        r.describe()
    } else {
        format!("{}; ids: {}", r.describe(), deep.describe())
    };
    report.spent = client.usage().table(&key) - before;
    info!(job = %job, route = source.route.as_str(), missing = report.missing, created = report.loaded.created,
          updated = report.loaded.updated, deleted = report.deleted, bytes = report.spent.bytes,
          requests = report.spent.requests, verified = report.verified, "Refreshed.");
    Ok(report)
}

/// Fetches the missing ids, 100 per request, and commits each request's rows as one
/// checkpointed batch through the load stage (upserts: a re-OCR'd page is replaced).
#[allow(clippy::too_many_arguments)]
async fn fetch_missing(
    pool: &PgPool,
    client: &SourceClient,
    job: &Arc<JobKey>,
    (columns, missing): (&[String], &[String]),
    seen: HashSet<u64>,
    batch_seq: i64,
    opts: &RefreshOptions,
    cancel: &CancellationToken,
) -> Result<BatchOutcome, RefreshError> {
    let load = Load::new(
        pool.clone(),
        LoadConfig {
            owner: opts.owner.clone(),
            bulk: false,
            retry_for: crate::store::DB_RETRY_FOR,
            insert_first: false,
            skip_fk_checks: false,
            target: opts.target.clone(),
            watchdog: Default::default(),
        },
    );
    let (tx, rx) = mpsc::channel(1);
    let loading = tokio::spawn(load.run(job.clone(), rx, Arc::new(Quiet)));
    let mut builder = PageBuilder::resuming(seen);
    let mut fetched: Result<(), RefreshError> = Ok(());
    // A few requests in flight (a recompiled municipality may miss many ids); their
    // answers are committed in order, each with its checkpoint.
    let table = job.document_type.table();
    let chunks: Vec<Vec<String>> = missing
        .chunks(IDS_PER_REQUEST)
        .map(<[String]>::to_vec)
        .collect();
    let columns = columns.to_vec();
    // Owned futures: a stream of borrowing closures is not provably Send.
    let mut pages = futures::stream::iter(chunks)
        .map(|chunk| {
            let (client, subdomain, columns) =
                (client.clone(), job.subdomain.clone(), columns.clone());
            async move {
                client
                    .rows_by_ids(&subdomain, table, &columns, &chunk)
                    .await
            }
        })
        .buffered(REQUESTS_IN_FLIGHT);
    let mut i = 0i64;
    while let Some(page) = pages.next().await {
        if cancel.is_cancelled() {
            fetched = Err(RefreshError::Cancelled {
                job: job.to_string(),
            });
            break;
        }
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                fetched = Err(e.into());
                break;
            }
        };
        i += 1;
        for raw in &page.rows {
            builder.push(raw, page.columns.as_deref());
        }
        let t = builder.finish();
        let batch = PageBatch {
            job: job.clone(),
            seq: batch_seq + i,
            cursor_after: None,
            last: false,
            fetched: page.rows.len(),
            rows: t.rows,
            rejects: t.rejects,
            fetch_time: std::time::Duration::ZERO,
            vectors: None,
        };
        if tx.send(batch).await.is_err() {
            break; // the load stopped: its error is reported below
        }
    }
    drop(tx);
    let loaded = match loading.await {
        Ok(r) => r?,
        Err(e) => {
            return Err(RefreshError::Sql {
                job: job.to_string(),
                source: sqlx::Error::Protocol(format!("the load task failed: {e}")),
            })
        }
    };
    fetched?;
    Ok(loaded.totals)
}

/// Removes the pages whose id is no longer upstream (after the fetch, so a re-OCR'd page,
/// replaced in place, is not among them), unless they are more than the safe share. In
/// civic-observer's tables the pages notebook entries reference are kept (and recorded):
/// they neither count towards the share nor are removed. Returns (removed, kept).
async fn remove_stale(
    pool: &PgPool,
    job: &JobKey,
    source: &HashSet<&str>,
    stored: &[String],
    opts: &RefreshOptions,
) -> Result<(u64, Vec<(String, i64)>), RefreshError> {
    let sql_err = |source| RefreshError::Sql {
        job: job.to_string(),
        source,
    };
    let stale: Vec<String> = stored
        .iter()
        .filter(|id| !source.contains(id.as_str()))
        .cloned()
        .collect();
    // Also with nothing stale: the kept pages recorded earlier that came back upstream
    // (or lost their entries and were removed) are no longer kept.
    let kept = opts
        .target
        .note_kept(pool, job, &stale)
        .await
        .map_err(sql_err)?;
    let held: HashSet<&str> = kept.iter().map(|k| k.0.as_str()).collect();
    let stale: Vec<String> = stale
        .into_iter()
        .filter(|id| !held.contains(id.as_str()))
        .collect();
    if stale.is_empty() {
        return Ok((0, kept));
    }
    let share = stale.len() as f64 / stored.len().max(1) as f64;
    if share > opts.max_delete_share && !opts.force {
        return Err(RefreshError::TooManyDeletes {
            job: job.to_string(),
            stale: stale.len(),
            stored: stored.len(),
            percent: share * 100.0,
            max: opts.max_delete_share * 100.0,
        });
    }
    let mut deleted = 0;
    for chunk in stale.chunks(DELETE_CHUNK) {
        let n = opts
            .target
            .delete_unreferenced(pool, job, chunk)
            .await
            .map_err(sql_err)?;
        store::add_deleted(pool, job.job_id, n)
            .await
            .map_err(sql_err)?;
        deleted += n;
    }
    info!(job = %job, deleted, kept = kept.len(), "Removed pages the source no longer has.");
    Ok((deleted, kept))
}
