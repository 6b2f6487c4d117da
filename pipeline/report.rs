//! End-of-run reports: the summary table every run ends with, and `status`.

use std::time::Duration;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, CellAlignment, Table};
use serde::Serialize;
use stages::store::jobs::JobRow;
use stages::JobKey;

/// What one job did in this run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct JobResult {
    pub subdomain: String,
    pub document_type: String,
    pub status: String,
    pub fetched: u64,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub rejected: u64,
    pub seconds: f64,
    pub verified: bool,
    pub verification: String,
    pub error: Option<String>,
    /// Where a resumed job started (pages fetched before this run).
    pub resumed_from: u64,
    #[serde(skip)]
    pub fetch_time: Duration,
    #[serde(skip)]
    pub transform_time: Duration,
    #[serde(skip)]
    pub load_time: Duration,
    #[serde(skip)]
    pub verify_time: Duration,
}

impl JobResult {
    pub fn new(job: &JobKey, row: &JobRow) -> Self {
        JobResult {
            subdomain: job.subdomain.clone(),
            document_type: job.document_type.as_str().into(),
            resumed_from: row.pages_fetched as u64,
            ..JobResult::default()
        }
    }

    pub fn pages_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.fetched as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// One line for logs and the progress display.
    pub fn one_line(&self) -> String {
        let mut s = format!(
            "{}: {} fetched, {} created, {} updated, {} unchanged, {} rejected in {:.1} s ({:.0} pages/s)",
            self.status, self.fetched, self.created, self.updated, self.unchanged, self.rejected, self.seconds, self.pages_per_second()
        );
        if !self.verification.is_empty() {
            s.push_str("; ");
            s.push_str(&self.verification);
        }
        s
    }
}

fn right(v: impl ToString) -> Cell {
    Cell::new(v.to_string()).set_alignment(CellAlignment::Right)
}

/// The summary table printed at the end of a backfill.
pub fn summary_table(results: &[JobResult], wall: Duration) -> String {
    let mut rows: Vec<&JobResult> = results.iter().collect();
    rows.sort_by(|a, b| (&a.subdomain, &a.document_type).cmp(&(&b.subdomain, &b.document_type)));
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "job",
        "status",
        "fetched",
        "created",
        "updated",
        "unchanged",
        "rejected",
        "seconds",
        "pages/s",
        "verification",
    ]);
    let mut total = JobResult::default();
    for r in &rows {
        total.fetched += r.fetched;
        total.created += r.created;
        total.updated += r.updated;
        total.unchanged += r.unchanged;
        total.rejected += r.rejected;
        let verification = match (&r.error, r.verification.is_empty()) {
            (Some(e), _) => shorten(e, 90),
            (None, false) => shorten(&r.verification, 90),
            (None, true) => String::new(),
        };
        t.add_row(vec![
            Cell::new(format!("{}/{}", r.subdomain, r.document_type)),
            Cell::new(&r.status),
            right(r.fetched),
            right(r.created),
            right(r.updated),
            right(r.unchanged),
            right(r.rejected),
            right(format!("{:.1}", r.seconds)),
            right(format!("{:.0}", r.pages_per_second())),
            Cell::new(verification),
        ]);
    }
    let secs = wall.as_secs_f64();
    t.add_row(vec![
        Cell::new(format!("TOTAL ({} jobs)", rows.len())),
        Cell::new(format!(
            "{} verified",
            rows.iter().filter(|r| r.verified).count()
        )),
        right(total.fetched),
        right(total.created),
        right(total.updated),
        right(total.unchanged),
        right(total.rejected),
        right(format!("{secs:.1}")),
        right(format!(
            "{:.0}",
            if secs > 0.0 {
                total.fetched as f64 / secs
            } else {
                0.0
            }
        )),
        Cell::new(""),
    ]);
    t.to_string()
}

/// Per-stage time summed over jobs: where the run spent its time.
pub fn stage_breakdown(results: &[JobResult]) -> String {
    let sum = |f: fn(&JobResult) -> Duration| results.iter().map(f).sum::<Duration>().as_secs_f64();
    let stages = [
        ("fetch", sum(|r| r.fetch_time)),
        ("transform", sum(|r| r.transform_time)),
        ("load", sum(|r| r.load_time)),
        ("verify", sum(|r| r.verify_time)),
    ];
    let busiest = stages
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|s| s.0)
        .unwrap_or("-");
    let parts: Vec<String> = stages
        .iter()
        .map(|(n, s)| format!("{n} {s:.1} s"))
        .collect();
    format!(
        "Stage time summed over jobs: {} (bottleneck: {busiest}).",
        parts.join(", ")
    )
}

/// The run's two phases in wall time: the load (start to last commit, verification of
/// each job included) and the search preparation after it (vectors left over, indexes,
/// statistics), which `Search ready in` details.
pub fn phases(results: &[JobResult], load_phase: Duration, total: Duration) -> String {
    let pages: u64 = results.iter().map(|r| r.fetched).sum();
    let load = load_phase.as_secs_f64();
    format!(
        "Load phase (start to last commit, jobs verified): {load:.1} s, {:.0} pages/s; search preparation {:.1} s; total {:.1} s.",
        pages as f64 / load.max(0.001),
        (total - load_phase).as_secs_f64(),
        total.as_secs_f64()
    )
}

/// `civicload status` as a table.
pub fn status_table(rows: &[JobRow]) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "job",
        "status",
        "fetched",
        "created",
        "updated",
        "unchanged",
        "rejected",
        "expected",
        "actual",
        "route",
        "verified at",
        "pages/s",
        "eta",
        "last error",
    ]);
    for j in rows {
        let per_second =
            (j.elapsed_seconds > 0.0).then(|| j.pages_fetched as f64 / j.elapsed_seconds);
        let rate = per_second.map(|r| format!("{r:.0}")).unwrap_or_default();
        let eta = match (j.status.as_str(), per_second, j.expected_count) {
            ("running", Some(r), Some(expected)) if r > 0.0 && expected > j.pages_fetched => {
                format!("{:.0} s", (expected - j.pages_fetched) as f64 / r)
            }
            _ => String::new(),
        };
        t.add_row(vec![
            Cell::new(format!("{}/{}", j.subdomain, j.document_type)),
            Cell::new(&j.status),
            right(j.pages_fetched),
            right(j.pages_created),
            right(j.pages_updated),
            right(j.pages_unchanged),
            right(j.pages_rejected),
            right(j.expected_count.map(|v| v.to_string()).unwrap_or_default()),
            right(j.actual_count.map(|v| v.to_string()).unwrap_or_default()),
            Cell::new(j.expected_source.clone().unwrap_or_default()),
            Cell::new(
                j.verified_at
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_default(),
            ),
            right(rate),
            right(eta),
            Cell::new(shorten(j.last_error.as_deref().unwrap_or(""), 60)),
        ]);
    }
    t.to_string()
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

/// `civicload status --totals`: pages and documents per municipality and document type.
pub fn totals_table(rows: &[stages::store::jobs::Totals]) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "municipality",
        "type",
        "pages",
        "documents",
        "first month",
        "last month",
    ]);
    let (mut pages, mut docs) = (0, 0);
    for r in rows {
        pages += r.pages;
        docs += r.documents;
        t.add_row(vec![
            Cell::new(&r.subdomain),
            Cell::new(&r.document_type),
            right(r.pages),
            right(r.documents),
            Cell::new(
                r.first_month
                    .map(|d| d.format("%Y-%m").to_string())
                    .unwrap_or_default(),
            ),
            Cell::new(
                r.last_month
                    .map(|d| d.format("%Y-%m").to_string())
                    .unwrap_or_default(),
            ),
        ]);
    }
    t.add_row(vec![
        Cell::new("TOTAL"),
        Cell::new(""),
        right(pages),
        right(docs),
        Cell::new(""),
        Cell::new(""),
    ]);
    t.to_string()
}
