//! Contender (b) of `scripts/bench.sh`: the source's ceiling. Pages through every
//! municipality's tables with civicload's own fetch stage (`stages::fetch::Fetch` over
//! `stages::source::SourceClient`: the same `_sort=id&id__gt=…&_size=1000` keyset
//! requests, the same column discovery, retries and page validation), in civicload's job
//! order (largest municipality first) and with its default concurrency (4 jobs at a
//! time), and drops every page: no transform, no database. No loader that goes through
//! this API can be faster than this on the same machine.
//!
//! ```text
//! cargo run --release --example source_ceiling -- \
//!     --source-url 'http://127.0.0.1:8890/{subdomain}/meetings/{table}.json' \
//!     --sites 'http://127.0.0.1:8890/sites/sites.json'
//! ```
//! The last stdout line is `source_ceiling {json}` with jobs, rows, requests, body bytes
//! and wall seconds.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use stages::fetch::{Fetch, RawPage};
use stages::source::{SourceClient, SourceConfig};
use stages::{DocumentType, JobKey};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Pages through the whole source with civicload's fetch stage and no database.
#[derive(Debug, Parser)]
struct Args {
    /// Source URL template with `{subdomain}` and `{table}`.
    #[arg(long)]
    source_url: String,
    /// The Datasette `sites` table JSON URL listing the municipalities.
    #[arg(long)]
    sites: String,
    /// Jobs (municipality, table) fetched at once: civicload's `--concurrency` default.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Pages in flight between fetch and the (discarding) consumer, as in civicload.
    #[arg(long, default_value_t = 2)]
    channel_capacity: usize,
}

/// What one job fetched.
#[derive(Default)]
struct Tally {
    rows: u64,
    requests: u64,
    bytes: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = SourceClient::new(SourceConfig {
        template: args.source_url.clone(),
        ..SourceConfig::default()
    })
    .context("building the HTTP client")?;
    let mut sites = client
        .sites(&args.sites)
        .await
        .with_context(|| format!("reading the sites list at {}", args.sites))?;
    // civicload claims the largest municipalities first (jobs::claim_next), which keeps
    // the biggest table from starting last and stretching the tail of the run.
    sites.sort_by(|a, b| {
        b.pages
            .unwrap_or(0)
            .cmp(&a.pages.unwrap_or(0))
            .then_with(|| a.subdomain.cmp(&b.subdomain))
    });
    let jobs: Vec<Arc<JobKey>> = sites
        .iter()
        .enumerate()
        .flat_map(|(i, site)| {
            DocumentType::ALL.into_iter().map(move |d| {
                Arc::new(JobKey {
                    job_id: (i * 2) as i64 + d as i64,
                    municipality_id: i as i64,
                    subdomain: site.subdomain.clone(),
                    document_type: d,
                })
            })
        })
        .collect();

    let started = Instant::now();
    let n_jobs = jobs.len();
    let results: Vec<anyhow::Result<Tally>> = futures::stream::iter(jobs)
        .map(|job| run_job(client.clone(), job, args.channel_capacity))
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let wall = started.elapsed();

    let mut total = Tally::default();
    for r in results {
        let t = r?;
        total.rows += t.rows;
        total.requests += t.requests;
        total.bytes += t.bytes;
    }
    let secs = wall.as_secs_f64().max(f64::EPSILON);
    println!(
        "source_ceiling {}",
        serde_json::json!({
            "jobs": n_jobs,
            "rows": total.rows,
            "requests": total.requests,
            "row_json_bytes": total.bytes,
            "wall_s": (secs * 1000.0).round() / 1000.0,
            "rows_per_s": (total.rows as f64 / secs).round(),
            "concurrency": args.concurrency,
        })
    );
    Ok(())
}

/// One job: civicload's fetch stage into a bounded channel whose consumer only counts.
async fn run_job(client: SourceClient, job: Arc<JobKey>, capacity: usize) -> anyhow::Result<Tally> {
    let (tx, mut rx) = mpsc::channel::<RawPage>(capacity.max(1));
    let fetch = Fetch {
        client,
        start_after: None,
        last_seq: 0,
        count: None,
        pulse: Default::default(),
        watchdog: Default::default(),
    };
    let task = tokio::spawn(fetch.run(job.clone(), tx, CancellationToken::new()));
    let mut tally = Tally::default();
    while let Some(page) = rx.recv().await {
        tally.rows += page.rows.len() as u64;
        tally.bytes += page.rows.iter().map(|r| r.get().len() as u64).sum::<u64>();
    }
    let report = task
        .await
        .with_context(|| format!("{job}: the fetch task panicked"))?
        .with_context(|| format!("{job}: fetching failed"))?;
    anyhow::ensure!(
        report.reached_end,
        "{job}: the fetch stopped before the end of the table"
    );
    tally.requests = report.pages;
    Ok(tally)
}
