//! `civicload status`: every job's status, counters and verification, or the totals;
//! in civic-observer's tables also the pages kept for users' notebooks.

use sqlx::PgPool;
use stages::store::jobs::{self, JobStatus};

use crate::cli::{Cli, StatusArgs};
use crate::db::connect_target;
use crate::exit::EXIT_OK;
use crate::ui::report::{self};

pub async fn status(cli: &Cli, args: &StatusArgs) -> anyhow::Result<u8> {
    let (pool, target) = connect_target(cli, 1).await?;
    if target.observer().is_some() {
        report_kept(&pool, args.json).await?;
    }
    if args.totals {
        let totals = jobs::totals(&pool).await?;
        if args.json {
            crate::outln!("{}", serde_json::to_string_pretty(&totals)?);
        } else {
            crate::outln!("{}", report::totals_table(&totals));
        }
        return Ok(EXIT_OK);
    }
    let rows: Vec<_> = jobs::list(&pool, None)
        .await?
        .into_iter()
        .filter(|j| !args.failed || j.status == JobStatus::Failed)
        .filter(|j| !args.incomplete || !j.completed_and_verified())
        .collect();
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        crate::outln!("No jobs match. Start with `civicload backfill --subdomain <SUB>`.");
    } else {
        crate::outln!("{}", report::status_table(&rows));
    }
    Ok(EXIT_OK)
}

/// civic-observer: pages gone upstream that civicload keeps because users' notebook
/// entries reference them (on stderr with `--json`, which stays the job list).
async fn report_kept(pool: &PgPool, json: bool) -> anyhow::Result<()> {
    let kept = stages::store::observer::pages::kept_pages(pool).await?;
    if kept.is_empty() {
        return Ok(());
    }
    let entries: i64 = kept.iter().map(|k| i64::from(k.3)).sum();
    let mut lines = vec![format!(
        "{} pages gone upstream are kept because {entries} notebook entries reference them:",
        kept.len()
    )];
    for (sub, doc, id, n) in &kept {
        lines.push(format!("  {sub}/{doc}: page {id} ({n} entries)"));
    }
    if json {
        eprintln!("{}", lines.join("\n"));
    } else {
        crate::outln!("{}", lines.join("\n"));
    }
    Ok(())
}
