//! `civicload verify`: recount jobs against the source, or with `--deep` compare id sets,
//! and with `--repair` fetch only what is missing and remove pages the source no longer has.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use stages::reconcile::{deep_compare, reconcile, Verdict};
use stages::source::SourceClient;
use stages::store::jobs::{self, JobRow};
use stages::store::refresh::{self as queue, RunStatus, Trigger};
use stages::target::Target;
use tracing::info;

/// What `verify` does for each job.
pub struct VerifyOptions {
    pub deep: bool,
    pub repair: bool,
    /// Remove stale pages even beyond the safe share.
    pub force: bool,
    /// The largest share of a job's pages a repair may delete without `force`.
    pub max_delete_share: f64,
}

/// The result for one job.
pub struct JobVerification {
    pub job: String,
    pub verified: bool,
    pub lines: Vec<String>,
}

pub async fn verify_job(
    pool: &PgPool,
    client: &SourceClient,
    target: &Target,
    row: &JobRow,
    owner: &str,
    opts: &VerifyOptions,
) -> anyhow::Result<JobVerification> {
    let job = Arc::new(row.key());
    // A repair is a refresh, in either target's tables (in civic-observer's it keeps
    // the pages that notebook entries reference).
    if opts.repair {
        return repair(pool, client, target, row, owner, opts).await;
    }
    let mut lines = Vec::new();
    if opts.deep {
        let report = deep_compare(pool, client, target, &job).await?;
        lines.push(format!("deep: {}", report.describe()));
    }
    let r = reconcile(pool, client, target, &job, None).await?;
    lines.push(r.describe());
    Ok(JobVerification {
        job: job.to_string(),
        verified: r.verdict == Verdict::Verified,
        lines,
    })
}

/// `--repair` is a refresh of the job (pipeline/refresh.rs, stages/src/refresh.rs): the
/// id sets compared, only the missing ids fetched, re-OCR'd pages replaced in place, pages
/// gone upstream removed within the safe share, verified exact.
async fn repair(
    pool: &PgPool,
    client: &SourceClient,
    target: &Target,
    row: &JobRow,
    owner: &str,
    opts: &VerifyOptions,
) -> anyhow::Result<JobVerification> {
    let job = Arc::new(row.key());
    let lease = Duration::from_secs(300);
    // Hold the job's lease so no backfill writes it meanwhile.
    let claimed = queue::claim_next(pool, &[row.id], &[], owner, lease, Trigger::Command).await?;
    let Some(claimed) = claimed else {
        let held = jobs::held_by_others(pool, &[row.id], owner).await?;
        let who = held
            .first()
            .map(|h| format!("{} since {}", h.2, h.3))
            .unwrap_or_else(|| "another worker".into());
        anyhow::bail!("{job}: cannot repair while the job is held by {who}; wait for it or stop it, then rerun `civicload verify --repair`");
    };
    let refresh = crate::refresh::options(
        owner.to_string(),
        opts.max_delete_share * 100.0,
        opts.force,
        target,
    );
    let done = crate::refresh::run_claimed(
        pool,
        client,
        &claimed,
        &refresh,
        &tokio_util::sync::CancellationToken::new(),
    )
    .await;
    if let Some(e) = done
        .error
        .as_ref()
        .filter(|_| done.status == RunStatus::Failed)
    {
        anyhow::bail!("{e}");
    }
    let r = &done.report;
    let mut lines = vec![format!(
        "repair: {} missing rows fetched: {} pages created, {} updated in place (re-OCR), {} rejected; removed {} stale pages",
        r.missing, r.loaded.created, r.loaded.updated, r.loaded.rejected, r.deleted
    )];
    if !r.kept.is_empty() {
        let entries: i64 = r.kept.iter().map(|k| k.1).sum();
        lines.push(format!(
            "repair: kept {} pages gone upstream because {entries} notebook entries reference them",
            r.kept.len()
        ));
    }
    lines.push(r.verification.clone());
    info!(job = %job, deleted = r.deleted, created = r.loaded.created, "Repaired.");
    Ok(JobVerification {
        job: job.to_string(),
        verified: done.status == RunStatus::Verified,
        lines,
    })
}
