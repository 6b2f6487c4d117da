//! `civicload maintain`, the bulk-mode decision of `backfill`, and what a backfill does
//! after its jobs so that the database ends searchable, fast and healthy:
//! vectorize -> indexes -> VACUUM (ANALYZE) -> refresh of `meeting_page_stats`.
//!
//! When the search (GIN) indexes exist:
//! - A backfill into an empty or nearly empty `meeting_pages` (an initial load, bulk by
//!   default) drops them first, so neither the load nor vectorize maintains them row by
//!   row, and builds them at its end, after `vectorize`, in one plain CREATE INDEX with a
//!   raised maintenance_work_mem.
//! - Any other backfill, and `maintain`, build them with CREATE INDEX CONCURRENTLY if they
//!   are missing (or invalid), so writes and searches go on meanwhile. While the page index
//!   is missing (a bulk load not finished yet), backfill stays in bulk mode.
//! - Between those moments ordinary writes keep them current: the row trigger computes the
//!   vector and the index is updated with it (fastupdate = off: no pending list).
//!   `vectorize` switches a present index to fastupdate = on for its mass update and back
//!   (see `stages::store::search_index::relax_fastupdate`).

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::{PgConnection, PgPool};
use stages::store::leases::Lease;
use stages::store::maintenance::{self, Toast};
use stages::store::partitions;
use stages::store::search::{self, BuildMode, SEARCH_INDEXES};
use stages::store::search_index;
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument};

use crate::vectorize::{bytes, Vectorize, VectorizeArgs};

/// Below this many pages a backfill loads in bulk mode by itself: the table is (nearly)
/// empty, so building vectors and indexes afterwards is far cheaper than row by row.
pub const BULK_THRESHOLD: i64 = 10_000;

/// maintenance_work_mem for index builds and VACUUM, unless configured (seed 001's value
/// for a 16 GB server; see scripts/postgresql.conf.sample for sizing by RAM).
pub const DEFAULT_MAINTENANCE_WORK_MEM: &str = "1GB";

/// `civicload maintain` flags.
#[derive(Debug, Args, Clone)]
pub struct MaintainArgs {
    /// Also rebuild every civicload index with REINDEX CONCURRENTLY (reclaims index bloat
    /// without blocking reads or writes).
    #[arg(long)]
    pub reindex: bool,
    /// maintenance_work_mem for this session's VACUUM and index builds (e.g. 512MB, 2GB);
    /// a GIN build takes at most 64MB of it, which builds faster than more.
    #[arg(long, env = "CIVICLOAD_MAINTENANCE_WORK_MEM", default_value = DEFAULT_MAINTENANCE_WORK_MEM)]
    pub maintenance_work_mem: String,
}

/// Which indexes to rebuild.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reindex {
    None,
    /// Every valid index of civicload's tables.
    All,
    /// The btree indexes of `meeting_pages`: a vectorize over most of the table gives
    /// every row a new version, and each btree a second entry for it.
    PagesBtrees,
}

/// What a maintenance run does.
#[derive(Clone, Debug)]
pub struct MaintainPlan {
    pub build: BuildMode,
    pub reindex: Reindex,
    pub vacuum: bool,
    /// Whether the vacuum also analyzes `meeting_pages` (false: the load just did).
    pub analyze_pages: bool,
    /// Whether the vacuum of `meeting_pages` covers its TOAST table: not after a bulk
    /// load, whose TOAST rows are new (the few a resumed job replaced are autovacuum's).
    pub vacuum_toast: Toast,
    pub maintenance_work_mem: String,
}

/// One step's outcome, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub step: String,
    pub seconds: f64,
    pub detail: String,
}

/// Steps as aligned columns (`ui::report::steps`).
fn render_steps<'a>(steps: impl IntoIterator<Item = &'a Step>) -> String {
    crate::ui::report::steps(
        steps
            .into_iter()
            .map(|s| (s.step.as_str(), s.seconds, s.detail.as_str())),
    )
}

/// A dedicated session for maintenance: its settings must not leak into pooled
/// connections that the load goes on using.
async fn maintenance_session(
    options: &PgConnectOptions,
    maintenance_work_mem: &str,
) -> anyhow::Result<PgConnection> {
    let options = options.clone().application_name("civicload maintain");
    Ok(search::maintenance_session(&options, maintenance_work_mem).await?)
}

/// Runs the plan: drop leftovers of interrupted rebuilds, REINDEX CONCURRENTLY as asked,
/// build missing search indexes, VACUUM (ANALYZE) every civicload table, refresh
/// `meeting_page_stats`.
#[instrument(skip_all, fields(build = ?plan.build, reindex = ?plan.reindex))]
pub async fn maintain(pool: &PgPool, plan: &MaintainPlan) -> anyhow::Result<Vec<Step>> {
    let mut conn = maintenance_session(&pool.connect_options(), &plan.maintenance_work_mem).await?;
    // One maintenance run at a time per database: several backfill processes finish at
    // about the same moment, and two sessions running VACUUM (ANALYZE) and REINDEX /
    // CREATE INDEX CONCURRENTLY on one table can deadlock (each waits for the other's
    // snapshot or lock). The later run then finds the work done.
    let t = Instant::now();
    let owner = stages::store::leases::owner_id();
    let lease = Lease::acquire(pool, MAINTAIN_LEASE, &owner)
        .await
        .context("waiting for another civicload maintenance run to finish")?;
    if t.elapsed() > Duration::from_secs(1) {
        info!(
            waited_s = t.elapsed().as_secs(),
            "Waited for another civicload maintenance run."
        );
    }
    let steps = maintain_locked(pool, plan, &mut conn, &owner).await;
    let _ = lease.release().await;
    let _ = sqlx::Connection::close(conn).await;
    steps
}

/// The lease that serializes maintenance runs (`stages::store::leases`).
const MAINTAIN_LEASE: &str = "maintain";

/// The steps of [`maintain`], in order, once the lease is held.
async fn maintain_locked(
    pool: &PgPool,
    plan: &MaintainPlan,
    conn: &mut PgConnection,
    owner: &str,
) -> anyhow::Result<Vec<Step>> {
    let mut steps = Vec::new();
    drop_leftovers(pool, conn, &mut steps).await?;
    reindex(pool, plan, &mut steps).await?;
    fill_page_columns(pool, &mut steps).await?;
    ensure_search_indexes(pool, conn, plan, owner, &mut steps).await?;
    resume_pages_autovacuum(pool, &mut steps).await?;
    if plan.vacuum {
        vacuum_tables(conn, plan, &mut steps).await?;
    }
    refresh_page_stats(conn, &mut steps).await?;
    Ok(steps)
}

/// Drops what interrupted REINDEX CONCURRENTLY runs left behind (a step if any).
async fn drop_leftovers(
    pool: &PgPool,
    conn: &mut PgConnection,
    steps: &mut Vec<Step>,
) -> anyhow::Result<()> {
    let t = Instant::now();
    let leftovers = maintenance::drop_reindex_leftovers(pool, conn).await?;
    if !leftovers.is_empty() {
        steps.push(Step {
            step: "drop leftovers of interrupted rebuilds".into(),
            seconds: t.elapsed().as_secs_f64(),
            detail: leftovers.join(", "),
        });
    }
    Ok(())
}

/// REINDEX CONCURRENTLY the valid indexes `plan.reindex` names, one step each, on
/// sessions of their own (`partitions::reindex_side_by_side`: a partitioned index
/// partition by partition on every core). A GIN index gets the memory a GIN build gets
/// (`search_index::gin_build_memory`, at most 64MB: more builds it slower and larger).
async fn reindex(pool: &PgPool, plan: &MaintainPlan, steps: &mut Vec<Step>) -> anyhow::Result<()> {
    let targets: Vec<_> = maintenance::indexes(pool)
        .await?
        .into_iter()
        .filter(|i| i.valid)
        .filter(|i| match plan.reindex {
            Reindex::None => false,
            Reindex::All => true,
            Reindex::PagesBtrees => i.table == "meeting_pages" && i.method == "btree",
        })
        .collect();
    let gin_memory = search_index::gin_build_memory(&plan.maintenance_work_mem);
    let options = pool
        .connect_options()
        .as_ref()
        .clone()
        .application_name("civicload maintain");
    let workers = search_index::build_workers();
    for index in targets {
        let t = Instant::now();
        let memory = match index.method.as_str() {
            "gin" => &gin_memory,
            _ => &plan.maintenance_work_mem,
        };
        let partitions =
            partitions::reindex_side_by_side(pool, &options, &index.index, memory, workers).await?;
        let side_by_side = partitions
            .map(|n| format!(", {n} partitions, {} at a time", workers.min(n)))
            .unwrap_or_default();
        let after = search::index_state(pool, &index.index)
            .await?
            .map(|s| s.bytes)
            .unwrap_or(0);
        steps.push(Step {
            step: format!("REINDEX CONCURRENTLY {}", index.index),
            seconds: t.elapsed().as_secs_f64(),
            detail: format!(
                "{} -> {}, maintenance_work_mem {memory}{side_by_side}",
                bytes(index.bytes),
                bytes(after)
            ),
        });
    }
    Ok(())
}

/// Copies meeting dates onto the pages a bulk COPY wrote without theirs (newest-first
/// search needs it), and computes the phrase keys of pages that have none (phrase search
/// uses them only once every page has its keys); a step each if any.
async fn fill_page_columns(pool: &PgPool, steps: &mut Vec<Step>) -> anyhow::Result<()> {
    let t = Instant::now();
    let dated = stages::store::search_fn::fill_missing_meeting_dates(pool).await?;
    if dated > 0 {
        steps.push(Step {
            step: "meeting dates copied onto pages".into(),
            seconds: t.elapsed().as_secs_f64(),
            detail: format!("{dated} pages"),
        });
    }
    let t = Instant::now();
    let keyed = stages::store::search_fn::fill_missing_phrase_keys(pool).await?;
    if keyed > 0 {
        steps.push(Step {
            step: "phrase keys computed".into(),
            seconds: t.elapsed().as_secs_f64(),
            detail: format!("{keyed} pages"),
        });
    }
    Ok(())
}

/// Builds each missing (or invalid) search index as `plan.build` says, one step each.
async fn ensure_search_indexes(
    pool: &PgPool,
    conn: &mut PgConnection,
    plan: &MaintainPlan,
    owner: &str,
    steps: &mut Vec<Step>,
) -> anyhow::Result<()> {
    for index in &SEARCH_INDEXES {
        let build = search_index::ensure_search_index(
            pool,
            conn,
            index,
            plan.build,
            owner,
            &plan.maintenance_work_mem,
        )
        .await?;
        steps.push(Step {
            step: format!("search index {}", build.name),
            seconds: build.took.as_secs_f64(),
            detail: index_build_detail(&build),
        });
    }
    Ok(())
}

/// What became of a search index: present, built or rebuilt, and its size.
fn index_build_detail(build: &search::IndexBuild) -> String {
    match (build.built, build.replaced_invalid) {
        (false, _) if build.restored_fastupdate_off => format!(
            "present ({}); fastupdate set back to off, pending list merged",
            bytes(build.bytes)
        ),
        (false, _) => format!("present ({})", bytes(build.bytes)),
        (true, false) => format!("built ({}, fastupdate off)", bytes(build.bytes)),
        (true, true) => format!(
            "rebuilt an invalid one ({}, fastupdate off)",
            bytes(build.bytes)
        ),
    }
}

/// Resumes the autovacuum of meeting_pages a bulk load paused (a step if it was paused).
async fn resume_pages_autovacuum(pool: &PgPool, steps: &mut Vec<Step>) -> anyhow::Result<()> {
    let t = Instant::now();
    if maintenance::resume_pages_autovacuum(pool).await? {
        steps.push(Step {
            step: "autovacuum of meeting_pages resumed".into(),
            seconds: t.elapsed().as_secs_f64(),
            detail: "paused during the bulk load".into(),
        });
    }
    Ok(())
}

/// VACUUM (with ANALYZE unless the load analyzed meeting_pages) every civicload table,
/// one step each.
async fn vacuum_tables(
    conn: &mut PgConnection,
    plan: &MaintainPlan,
    steps: &mut Vec<Step>,
) -> anyhow::Result<()> {
    for table in maintenance::TABLES {
        let t = Instant::now();
        let analyze = plan.analyze_pages || table != "meeting_pages";
        maintenance::vacuum(conn, table, analyze, plan.vacuum_toast).await?;
        let toast = match plan.vacuum_toast {
            Toast::Skipped if table == "meeting_pages" => ", TOAST left to autovacuum",
            _ => "",
        };
        steps.push(Step {
            step: match analyze {
                true => format!("VACUUM (ANALYZE) {table}{toast}"),
                false => format!("VACUUM {table} (analyzed during the load{toast})"),
            },
            seconds: t.elapsed().as_secs_f64(),
            detail: String::new(),
        });
    }
    Ok(())
}

/// REFRESH MATERIALIZED VIEW CONCURRENTLY meeting_page_stats (a step).
async fn refresh_page_stats(conn: &mut PgConnection, steps: &mut Vec<Step>) -> anyhow::Result<()> {
    let t = Instant::now();
    maintenance::refresh_page_stats(conn).await?;
    steps.push(Step {
        step: "REFRESH MATERIALIZED VIEW meeting_page_stats".into(),
        seconds: t.elapsed().as_secs_f64(),
        detail: "concurrently".into(),
    });
    Ok(())
}

/// `civicload maintain`.
pub async fn run_maintain(pool: &PgPool, args: &MaintainArgs) -> anyhow::Result<()> {
    let plan = MaintainPlan {
        build: BuildMode::Concurrently,
        reindex: if args.reindex {
            Reindex::All
        } else {
            Reindex::None
        },
        vacuum: true,
        analyze_pages: true,
        vacuum_toast: Toast::Included,
        maintenance_work_mem: args.maintenance_work_mem.clone(),
    };
    let started = Instant::now();
    let steps = maintain(pool, &plan).await?;
    crate::outln!("{}", render_steps(&steps));
    crate::outln!(
        "Maintenance done in {:.1} s. `civicload health` shows the result.",
        started.elapsed().as_secs_f64()
    );
    let missing = search::missing_count(pool, search::VectorTarget::Pages).await?;
    if missing > 0 {
        crate::outln!("{missing} pages have no search vector yet: run `civicload vectorize`.");
    }
    Ok(())
}

/// How a backfill run writes, decided once before any job writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadMode {
    /// The load skips the per-row vector trigger; vectors are built after it.
    pub bulk: bool,
    /// `meeting_pages` was (nearly) empty: the search indexes were dropped, and are built
    /// at the end with a plain, faster CREATE INDEX (nothing is being served yet).
    pub initial: bool,
    /// `meeting_pages` was analyzed during the load (its last pages): the vacuum after
    /// it need not analyze it again.
    pub pages_analyzed: bool,
}

impl LoadMode {
    /// Whether the load skips the per-row vector trigger.
    pub fn is_bulk(self) -> bool {
        self.bulk
    }
}

/// What the command line asks of the load mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BulkRequest {
    /// `--verify-only`: nothing is written, nothing is decided.
    VerifyOnly,
    /// `--no-bulk`.
    Never,
    /// `--bulk`.
    Always,
    /// Neither: decided from the table (see [`decide_bulk`]).
    Auto,
}

/// Decides the load mode. Bulk: never with `--no-bulk` (or `--verify-only`); always with
/// `--bulk`; otherwise when `meeting_pages` holds fewer than [`BULK_THRESHOLD`] pages (an
/// initial load), or when the page search index is missing (a bulk load that has not
/// finished yet: nothing maintains the index, so vectors can wait for the end).
///
/// Into a nearly empty table the search indexes are dropped in any case: maintained row
/// by row with fastupdate off they would slow every write ~10x, and rebuilding them over
/// a few thousand pages costs nothing.
pub async fn decide_bulk(pool: &PgPool, request: BulkRequest) -> anyhow::Result<LoadMode> {
    if request == BulkRequest::VerifyOnly {
        return Ok(LoadMode {
            bulk: false,
            initial: false,
            pages_analyzed: false,
        });
    }
    let pages = search::pages_up_to(pool, BULK_THRESHOLD).await?;
    let initial = pages < BULK_THRESHOLD;
    if initial {
        search::drop_search_indexes(pool).await?;
    }
    let index_missing = search::index_state(pool, SEARCH_INDEXES[0].name)
        .await?
        .is_none_or(|s| !s.valid);
    let bulk = match request {
        BulkRequest::VerifyOnly | BulkRequest::Never => false,
        BulkRequest::Always => true,
        BulkRequest::Auto => initial || index_missing,
    };
    let why = if request == BulkRequest::Never {
        "--no-bulk"
    } else if request == BulkRequest::Always {
        "--bulk"
    } else if initial {
        "meeting_pages is nearly empty"
    } else if index_missing {
        "the search index is not built yet"
    } else {
        "the search index is in service"
    };
    if bulk {
        maintenance::pause_pages_autovacuum(pool).await?;
        info!(
            pages,
            "Bulk mode ({why}): the search index is built after the load, and any search vector the load leaves out."
        );
    } else if initial {
        info!(pages, "Trigger mode ({why}): every page gets its vector as it is written; the search index is built after the load.");
    }
    Ok(LoadMode {
        bulk,
        initial,
        pages_analyzed: false,
    })
}

/// After the jobs of a backfill run: build the missing vectors (a no-op when none are
/// missing), then indexes, statistics and the stats view. Prints what it did.
pub async fn after_backfill(pool: &PgPool, mode: LoadMode) -> anyhow::Result<()> {
    let started = Instant::now();
    let cancel = CancellationToken::new();
    let signals =
        crate::shutdown::on_signal(cancel.clone(), "finishing the batches in flight", None);
    let result = finish_load(pool, mode, &cancel, started).await;
    signals.abort();
    result
}

async fn finish_load(
    pool: &PgPool,
    mode: LoadMode,
    cancel: &CancellationToken,
    started: Instant,
) -> anyhow::Result<()> {
    let vectorized = Vectorize {
        args: VectorizeArgs::default(),
        final_vacuum: false,
        cancel: cancel.clone(),
    }
    .run(&pool.connect_options())
    .await
    .context(
        "building search vectors after the load (the pages are loaded; run `civicload vectorize`, then `civicload maintain`)",
    )?;
    if vectorized.interrupted {
        crate::outln!("{}", vectorized.describe());
        crate::outln!("Stopped while building search vectors: run `civicload vectorize`, then `civicload maintain`.");
        return Ok(());
    }
    if vectorized.pages_updated() > 0 || mode.is_bulk() {
        crate::outln!("{}", vectorized.describe());
    }
    let table_rows = maintenance::counts(pool).await?.pages_estimated;
    let plan = after_load_plan(
        mode,
        vectorized.pages_updated(),
        table_rows,
        maintenance_work_mem_from_env(),
    );
    // The references a bulk load did not check row by row, checked at once beside the
    // index build (which uses one core).
    let references = async {
        match mode.is_bulk() {
            true => check_references(pool).await.map(Some),
            false => Ok(None),
        }
    };
    let (steps, references) = tokio::select! {
        (steps, references) = async { tokio::join!(maintain(pool, &plan), references) } => (
            steps.context(
                "preparing the database for search after the load (run `civicload maintain` to finish)",
            )?,
            references?,
        ),
        _ = cancel.cancelled() => anyhow::bail!(
            "stopped while preparing the database for search: the pages and vectors are in; run `civicload maintain` to finish"
        ),
    };
    crate::outln!("{}", render_steps(steps.iter().chain(&references)));
    let sizes = maintenance::rel_sizes(pool, "meeting_pages").await?;
    crate::outln!(
        "Search ready in {:.1} s: meeting_pages heap {}, with TOAST {}, indexes {}, total {}.",
        started.elapsed().as_secs_f64(),
        bytes(sizes.heap),
        bytes(sizes.table),
        bytes(sizes.indexes),
        bytes(sizes.total)
    );
    Ok(())
}

/// Every page's document and municipality exist (see stages/src/store/integrity.rs); an
/// error that names the dangling pages and what to do otherwise.
async fn check_references(pool: &PgPool) -> anyhow::Result<Step> {
    let started = Instant::now();
    let (dangling, total) = stages::store::integrity::dangling_pages(pool)
        .await
        .context("checking that every page's document and municipality exist (the pages are loaded; the next bulk backfill checks again)")?;
    if total > 0 {
        let listed: Vec<String> = dangling
            .iter()
            .map(|d| {
                format!(
                    "{} document {}: {} pages",
                    d.municipality, d.document_id, d.pages
                )
            })
            .collect();
        anyhow::bail!(
            "{total} pages in meeting_pages reference a meeting document or municipality that does not exist ({}{}). \
             The bulk load wrote its pages without per-row foreign-key checks and checked them here: something deleted those rows while their pages were loading. \
             Delete the dangling pages (DELETE FROM meeting_pages p WHERE NOT EXISTS (SELECT 1 FROM meeting_documents d WHERE d.id = p.document_id) OR NOT EXISTS (SELECT 1 FROM municipalities m WHERE m.id = p.municipality_id)), \
             then run `civicload backfill --subdomain <those municipalities>` to load them again.",
            listed.join("; "),
            if dangling.iter().map(|d| d.pages).sum::<i64>() == total { "" } else { "; ..." }
        );
    }
    Ok(Step {
        step: "foreign keys of meeting_pages checked".into(),
        seconds: started.elapsed().as_secs_f64(),
        detail: "every page's document and municipality exist".into(),
    })
}

/// A bulk load ends with a rebuild of the btrees that vectorize churned, the search
/// indexes (a plain, faster CREATE INDEX after an initial load, when nothing is served
/// yet; CONCURRENTLY otherwise) and VACUUM (ANALYZE) of everything (so does an initial
/// load in trigger mode); an ordinary run only builds what is missing, concurrently, and
/// leaves vacuuming to autovacuum unless it had vectors to build.
fn after_load_plan(
    mode: LoadMode,
    rewritten: u64,
    table_rows: i64,
    maintenance_work_mem: String,
) -> MaintainPlan {
    // Vectorize rewrote most rows: each btree of the table holds a second entry for them.
    // (A table never analyzed estimates no rows: a fresh bulk load, so rebuild.)
    let churned = rewritten > 0 && rewritten >= table_rows.max(0) as u64 / 2;
    MaintainPlan {
        build: if mode.initial {
            BuildMode::Blocking
        } else {
            BuildMode::Concurrently
        },
        reindex: if mode.bulk && churned {
            Reindex::PagesBtrees
        } else {
            Reindex::None
        },
        vacuum: mode.bulk || mode.initial || rewritten > 0,
        // Unless vectorize rewrote pages since.
        analyze_pages: !mode.pages_analyzed || rewritten > 0,
        // Vectorize rewrites rows (and their TOAST values) where it ran.
        vacuum_toast: match mode.bulk && rewritten == 0 {
            true => Toast::Skipped,
            false => Toast::Included,
        },
        maintenance_work_mem,
    }
}

/// `maintain --maintenance-work-mem` for the steps after a backfill, which has no such
/// flag: the same environment variable, or the default.
fn maintenance_work_mem_from_env() -> String {
    std::env::var("CIVICLOAD_MAINTENANCE_WORK_MEM")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_MAINTENANCE_WORK_MEM.to_string())
}

/// `civicload vectorize`.
pub async fn run_vectorize(pool: &PgPool, args: &VectorizeArgs) -> anyhow::Result<bool> {
    let cancel = CancellationToken::new();
    let signals =
        crate::shutdown::on_signal(cancel.clone(), "finishing the batches in flight", None);
    let report = Vectorize {
        args: args.clone(),
        final_vacuum: true,
        cancel,
    }
    .run(&pool.connect_options())
    .await;
    signals.abort();
    let report = report?;
    crate::outln!("{}", report.describe());
    if !report.interrupted {
        for index in &SEARCH_INDEXES {
            if search::index_state(pool, index.name).await?.is_none() {
                crate::outln!(
                    "The search index {} does not exist yet: run `civicload maintain` to build it.",
                    index.name
                );
            }
        }
    }
    Ok(!report.interrupted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(bulk: bool, initial: bool, pages_analyzed: bool) -> LoadMode {
        LoadMode {
            bulk,
            initial,
            pages_analyzed,
        }
    }

    fn plan(mode: LoadMode, rewritten: u64, table_rows: i64) -> MaintainPlan {
        after_load_plan(mode, rewritten, table_rows, "64MB".into())
    }

    #[test]
    fn an_initial_bulk_load_builds_blocking_rebuilds_churned_btrees_and_vacuums_all() {
        // Vectorize wrote every page of a table never analyzed (it estimates no rows).
        let p = plan(mode(true, true, false), 200_000, 0);
        assert_eq!(p.build, BuildMode::Blocking);
        assert_eq!(p.reindex, Reindex::PagesBtrees);
        assert!(p.vacuum && p.analyze_pages);
        assert_eq!(p.vacuum_toast, Toast::Included);
        assert_eq!(p.maintenance_work_mem, "64MB");
    }

    #[test]
    fn a_bulk_load_whose_vectors_civicload_wrote_skips_the_new_toast_and_the_analyze_done() {
        let p = plan(mode(true, true, true), 0, 200_000);
        assert_eq!(p.build, BuildMode::Blocking);
        assert_eq!(p.reindex, Reindex::None);
        assert!(p.vacuum);
        assert!(
            !p.analyze_pages,
            "analyzed during the load, nothing rewritten since"
        );
        assert_eq!(p.vacuum_toast, Toast::Skipped);
    }

    #[test]
    fn a_bulk_load_into_a_served_table_builds_concurrently_and_reindexes_only_when_churned() {
        let few = plan(mode(true, false, true), 1_000, 1_000_000);
        assert_eq!(few.build, BuildMode::Concurrently);
        assert_eq!(
            few.reindex,
            Reindex::None,
            "a few rewritten rows: no rebuild"
        );
        assert!(
            few.analyze_pages,
            "vectorize rewrote pages after the analyze"
        );
        assert_eq!(few.vacuum_toast, Toast::Included);
        let most = plan(mode(true, false, false), 600_000, 1_000_000);
        assert_eq!(most.reindex, Reindex::PagesBtrees);
    }

    #[test]
    fn an_ordinary_run_only_builds_what_is_missing_and_leaves_vacuum_to_autovacuum() {
        let p = plan(mode(false, false, false), 0, 1_000_000);
        assert_eq!(p.build, BuildMode::Concurrently);
        assert_eq!(p.reindex, Reindex::None);
        assert!(!p.vacuum);
        let with_vectors = plan(mode(false, false, false), 10, 1_000_000);
        assert!(with_vectors.vacuum, "it rewrote rows: vacuum them");
        assert_eq!(
            with_vectors.reindex,
            Reindex::None,
            "never outside bulk mode"
        );
    }

    #[test]
    fn an_initial_load_in_trigger_mode_builds_blocking_and_vacuums() {
        let p = plan(mode(false, true, false), 0, 5_000);
        assert_eq!(p.build, BuildMode::Blocking);
        assert!(p.vacuum && p.analyze_pages);
        assert_eq!(p.vacuum_toast, Toast::Included);
    }
}
