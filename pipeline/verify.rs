//! `civicload verify`: recount jobs against the source, or with `--deep` compare id sets,
//! and with `--repair` fetch only what is missing and remove pages the source no longer has.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use stages::load::{Load, LoadConfig};
use stages::reconcile::{deep_compare, reconcile, Verdict};
use stages::source::SourceClient;
use stages::store::jobs::{self, JobRow, Outcome};
use stages::store::refresh::{self as queue, RunStatus, Trigger};
use stages::target::Target;
use stages::transform::PageBuilder;
use stages::PageBatch;
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
    // civicload's own schema: a repair is a refresh. The application's tables: the
    // target's repair, which keeps pages that notebook entries reference.
    if opts.repair && target.observer().is_none() {
        return repair(pool, client, row, owner, opts).await;
    }
    let mut lines = Vec::new();
    if opts.deep || opts.repair {
        let report = deep_compare(pool, client, target, &job).await?;
        lines.push(format!("deep: {}", report.describe()));
        if opts.repair && !report.is_exact() {
            lines.extend(repair_observer(pool, client, target, row, owner, opts, &report).await?);
        }
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
    let refresh =
        crate::refresh::options(owner.to_string(), opts.max_delete_share * 100.0, opts.force);
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
    lines.push(r.verification.clone());
    info!(job = %job, deleted = r.deleted, created = r.loaded.created, "Repaired.");
    Ok(JobVerification {
        job: job.to_string(),
        verified: done.status == RunStatus::Verified,
        lines,
    })
}

/// `--repair` with the civic-observer target (see `verify_job`).
async fn repair_observer(
    pool: &PgPool,
    client: &SourceClient,
    target: &Target,
    row: &JobRow,
    owner: &str,
    opts: &VerifyOptions,
    report: &stages::reconcile::DeepReport,
) -> anyhow::Result<Vec<String>> {
    let job = Arc::new(row.key());
    let lease = Duration::from_secs(300);
    // Hold the job's lease so no backfill writes it meanwhile.
    let Some(_claimed) = jobs::claim(pool, row.id, owner, lease).await? else {
        let held = jobs::held_by_others(pool, &[row.id], owner).await?;
        let who = held
            .first()
            .map(|h| format!("{} since {}", h.2, h.3))
            .unwrap_or_else(|| "another worker".into());
        anyhow::bail!("{job}: cannot repair while the job is held by {who}; wait for it or stop it, then rerun `civicload verify --repair`");
    };
    let result = repair_held(pool, client, target, &job, opts, report).await;
    let outcome = if result.is_ok() {
        Outcome::Completed
    } else {
        Outcome::Failed
    };
    let error = result.as_ref().err().map(crate::ui::error::one_line);
    jobs::release(pool, row.id, owner, outcome, error.as_deref()).await?;
    result
}

async fn repair_held(
    pool: &PgPool,
    client: &SourceClient,
    target: &Target,
    job: &Arc<stages::JobKey>,
    opts: &VerifyOptions,
    report: &stages::reconcile::DeepReport,
) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    let table = job.document_type.table();
    if !report.missing.is_empty() {
        let columns = client.columns(&job.subdomain, table).await?;
        let load = Load::new(
            pool.clone(),
            LoadConfig {
                target: target.clone(),
                ..LoadConfig::default()
            },
        );
        let mut builder = PageBuilder::new();
        let (mut created, mut updated, mut rejected) = (0, 0, 0);
        for chunk in report.missing.chunks(100) {
            let page = client
                .rows_by_ids(&job.subdomain, table, &columns, chunk)
                .await?;
            for raw in &page.rows {
                builder.push(raw, page.columns.as_deref());
            }
            let t = builder.finish();
            let batch = PageBatch {
                job: job.clone(),
                seq: 0,
                cursor_after: None,
                last: false,
                fetched: page.rows.len(),
                rows: t.rows,
                rejects: t.rejects,
                fetch_time: Duration::ZERO,
                vectors: None,
            };
            let o = load.commit_unguarded(&batch).await?;
            created += o.created;
            updated += o.updated;
            rejected += o.rejected;
        }
        lines.push(format!("repair: fetched {} missing rows: {created} pages created, {updated} updated in place (re-OCR), {rejected} rejected", report.missing.len()));
    }
    // Pages whose source id is gone: recomputed after the fetch, since a re-OCR'd page was
    // just replaced in place.
    let after = deep_compare(pool, client, target, job).await?;
    if after.stale.len() > after.kept.len() {
        let share = after.stale.len() as f64 / after.stored.max(1) as f64;
        if share > opts.max_delete_share && !opts.force {
            anyhow::bail!(
                "{job}: {} of {} stored pages ({:.1}%) no longer exist upstream, more than the safe {:.0}%; nothing was deleted. If the source really lost them, rerun with --force",
                after.stale.len(),
                after.stored,
                share * 100.0,
                opts.max_delete_share * 100.0
            );
        }
        let gone = target.delete_stale(pool, job, &after.stale).await?;
        let deleted = gone.deleted;
        lines.push(format!("repair: removed {deleted} stale pages"));
        info!(job = %job, deleted, "Removed pages the source no longer has.");
    }
    if !after.kept.is_empty() {
        let entries: i64 = after.kept.iter().map(|k| k.1).sum();
        lines.push(format!(
            "repair: kept {} pages gone upstream because {entries} notebook entries reference them",
            after.kept.len()
        ));
    }
    Ok(lines)
}
