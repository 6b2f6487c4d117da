//! `civicload verify`: recount jobs against the source, or with `--deep` compare id sets,
//! and with `--repair` fetch only what is missing and remove pages the source no longer has.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use stages::load::{Load, LoadConfig};
use stages::reconcile::{deep_compare, reconcile, Verdict};
use stages::source::SourceClient;
use stages::store::jobs::{self, JobRow, Outcome};
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
    row: &JobRow,
    owner: &str,
    opts: &VerifyOptions,
) -> anyhow::Result<JobVerification> {
    let job = Arc::new(row.key());
    let mut lines = Vec::new();
    if opts.deep || opts.repair {
        let report = deep_compare(pool, client, &job).await?;
        lines.push(format!("deep: {}", report.describe()));
        if opts.repair && !report.is_exact() {
            lines.extend(repair(pool, client, row, owner, opts, &report).await?);
        }
    }
    let r = reconcile(pool, client, &job, None).await?;
    lines.push(r.describe());
    Ok(JobVerification {
        job: job.to_string(),
        verified: r.verdict == Verdict::Verified,
        lines,
    })
}

async fn repair(
    pool: &PgPool,
    client: &SourceClient,
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
    let result = repair_held(pool, client, &job, opts, report).await;
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
    job: &Arc<stages::JobKey>,
    opts: &VerifyOptions,
    report: &stages::reconcile::DeepReport,
) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    let table = job.document_type.table();
    if !report.missing.is_empty() {
        let columns = client.columns(&job.subdomain, table).await?;
        let load = Load::new(pool.clone(), LoadConfig::default());
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
    let after = deep_compare(pool, client, job).await?;
    if !after.stale.is_empty() {
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
        let deleted =
            jobs::delete_pages(pool, job.municipality_id, job.document_type, &after.stale).await?;
        lines.push(format!("repair: removed {deleted} stale pages"));
        info!(job = %job, deleted, "Removed pages the source no longer has.");
    }
    Ok(lines)
}
