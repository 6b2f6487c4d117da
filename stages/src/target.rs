//! Whose tables civicload writes (DESIGN.md, "Targets"): its own schema, or civic-observer's
//! Django tables (CIVIC_OBSERVER.md). This is the one seam: the stages do not change with
//! the target; the load, reconcile and repair steps ask the `Target` where pages go, how
//! they are counted, which ids are stored and how stale ones are removed. The SQL of each
//! side lives in `store::jobs` (own schema) and `store::observer` (civic-observer).

use std::collections::HashSet;

use sqlx::PgPool;

use crate::batch::JobKey;
use crate::store::{jobs, observer, refresh};

pub use crate::store::observer::types::{
    Generation, StaleOutcome, StoredCount, BOOKKEEPING_SCHEMA, GIN_CLEANER,
};

/// Which tables a run reads and writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Target {
    /// civicload's own schema (the default).
    #[default]
    Civicload,
    /// civic-observer's tables, as found by the start-up check.
    CivicObserver(observer::ObserverSchema),
}

impl Target {
    pub fn observer(&self) -> Option<&observer::ObserverSchema> {
        match self {
            Target::Civicload => None,
            Target::CivicObserver(s) => Some(s),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Target::Civicload => "civicload",
            Target::CivicObserver(_) => "civic-observer",
        }
    }

    /// Pages stored for a job, and how many of them are kept for notebooks.
    pub async fn count_pages(
        &self,
        pool: &PgPool,
        job: &JobKey,
    ) -> Result<StoredCount, sqlx::Error> {
        match self {
            Target::Civicload => Ok(StoredCount {
                stored: jobs::count_pages(pool, job.municipality_id, job.document_type).await?,
                kept: 0,
            }),
            Target::CivicObserver(_) => observer::pages::count(pool, job).await,
        }
    }

    /// The source ids stored for a job, sorted.
    pub async fn stored_ids(
        &self,
        pool: &PgPool,
        job: &JobKey,
    ) -> Result<Vec<String>, sqlx::Error> {
        match self {
            Target::Civicload => {
                jobs::local_source_ids(pool, job.municipality_id, job.document_type).await
            }
            Target::CivicObserver(_) => observer::pages::stored_ids(pool, job).await,
        }
    }

    /// Removes a job's pages that the source no longer has. In civic-observer's tables a
    /// page that notebook entries reference is kept instead (and recorded as kept).
    pub async fn delete_stale(
        &self,
        pool: &PgPool,
        job: &JobKey,
        ids: &[String],
    ) -> Result<StaleOutcome, sqlx::Error> {
        match self {
            Target::Civicload => Ok(StaleOutcome {
                deleted: jobs::delete_pages(pool, job.municipality_id, job.document_type, ids)
                    .await?,
                kept: Vec::new(),
            }),
            Target::CivicObserver(_) => observer::pages::delete_stale(pool, job, ids).await,
        }
    }

    /// Removes those of a job's pages `ids` that nothing of the application references;
    /// returns how many. In civic-observer's tables a page a notebook entry references
    /// stays (record it with `note_kept` first). The deletes of a refresh, in chunks.
    pub async fn delete_unreferenced(
        &self,
        pool: &PgPool,
        job: &JobKey,
        ids: &[String],
    ) -> Result<u64, sqlx::Error> {
        match self {
            Target::Civicload => {
                jobs::delete_pages(pool, job.municipality_id, job.document_type, ids).await
            }
            Target::CivicObserver(_) => observer::pages::delete_unreferenced(pool, job, ids).await,
        }
    }

    /// The page keys of a job's stored pages but those with an id in `except` (see
    /// `store::refresh::page_keys_except`).
    pub async fn page_keys_except(
        &self,
        pool: &PgPool,
        job: &JobKey,
        except: &HashSet<&str>,
    ) -> Result<HashSet<u64>, sqlx::Error> {
        match self {
            Target::Civicload => {
                refresh::page_keys_except(pool, job.municipality_id, job.document_type, except)
                    .await
            }
            Target::CivicObserver(_) => observer::pages::page_keys_except(pool, job, except).await,
        }
    }

    /// The page keys of a job's pages up to `cursor` (see `jobs::page_keys_through`).
    pub async fn page_keys_through(
        &self,
        pool: &PgPool,
        job: &JobKey,
        cursor: &str,
    ) -> Result<HashSet<u64>, sqlx::Error> {
        match self {
            Target::Civicload => {
                jobs::page_keys_through(pool, job.municipality_id, job.document_type, cursor).await
            }
            Target::CivicObserver(_) => observer::pages::page_keys_through(pool, job, cursor).await,
        }
    }

    /// Records which of a job's stale ids are kept for notebooks (civic-observer only);
    /// returns them with their entry counts.
    pub async fn note_kept(
        &self,
        pool: &PgPool,
        job: &JobKey,
        stale: &[String],
    ) -> Result<Vec<(String, i64)>, sqlx::Error> {
        match self {
            Target::Civicload => Ok(Vec::new()),
            Target::CivicObserver(_) => observer::pages::note_kept(pool, job, stale).await,
        }
    }
}

/// While a G1 load runs: merges the GIN pending lists on a connection of its own every
/// `every`, until `stop`. The batches (whose `observer_write_pages` raises their own
/// session's pending-list limit) then append to the list without merging it while they
/// hold the trigger switch's lock; the merge, the bulk of a GIN insert's cost, runs
/// beside them. Stops at the first error (a role that does not own the index), logged.
pub async fn clean_gin_pending_lists(
    pool: PgPool,
    every: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    use std::sync::atomic::Ordering;
    GIN_CLEANER.store(true, Ordering::Relaxed);
    run_gin_cleaner(&pool, every, &stop).await;
    GIN_CLEANER.store(false, Ordering::Relaxed);
}

async fn run_gin_cleaner(
    pool: &PgPool,
    every: std::time::Duration,
    stop: &tokio_util::sync::CancellationToken,
) {
    // Not more often: a merge of a longer list costs less per page (its entries are
    // sorted and written per key once).
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        if let Err(e) = observer::upkeep::clean_pending_lists(pool).await {
            tracing::warn!(error = %e, "Could not merge the GIN pending lists beside the load; the batches merge them themselves.");
            return;
        }
    }
}
