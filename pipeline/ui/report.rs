//! End-of-run reports (the summary every run ends with, the jobs left unfinished, the
//! steps after a load) and the tables of `status`.

use std::time::Duration;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, CellAlignment, ContentArrangement, Table};
use stages::job_run::{JobEnd, JobFailure};
use stages::load::LoadReport;
use stages::reconcile::Verdict;
use stages::store::jobs::{JobRow, JobStatus, Outcome};
use stages::JobKey;

/// What one job did in this run.
#[derive(Clone, Debug, Default)]
pub struct JobResult {
    pub subdomain: String,
    pub document_type: String,
    /// How the job ended (failed until the run says otherwise).
    pub status: Outcome,
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
    pub fetch_time: Duration,
    pub transform_time: Duration,
    pub load_time: Duration,
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
        per_second(self.fetched, self.seconds)
    }

    /// `subdomain/document type`.
    pub fn job(&self) -> String {
        format!("{}/{}", self.subdomain, self.document_type)
    }

    /// Takes the load stage's counters and time.
    /// A job's line from how its run ended.
    pub fn from_end(job: &JobKey, row: &JobRow, end: &JobEnd) -> Self {
        let mut r = JobResult::new(job, row);
        if let Some(load) = &end.load {
            r.absorb(load);
        }
        r.status = end.outcome;
        r.seconds = end.seconds;
        r.fetch_time = end.fetch_time;
        r.transform_time = end.transform_time;
        r.verify_time = end.verify_time;
        r.error = end.failure.as_ref().map(with_advice);
        match &end.verification {
            Some(Ok(rec)) => {
                r.verified = rec.verdict == Verdict::Verified;
                r.verification = rec.describe();
            }
            Some(Err(e)) => r.verification = format!("verification failed: {e}"),
            None => {}
        }
        r
    }

    pub fn absorb(&mut self, load: &LoadReport) {
        self.fetched = load.totals.fetched;
        self.created = load.totals.created;
        self.updated = load.totals.updated;
        self.unchanged = load.totals.unchanged;
        self.rejected = load.totals.rejected;
        self.load_time = load.load_time;
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

/// How many of the slowest jobs the end-of-run summary lists.
pub const SLOWEST: usize = 10;

/// The end of a run, a few lines whatever the number of jobs: the totals (one row whose
/// first number is the pages fetched: scripts and tests read it), the slowest jobs, and
/// where every job is listed. The jobs that failed or are not verified follow it (see
/// [`unfinished`]).
pub fn summary(results: &[JobResult], wall: Duration) -> String {
    let mut out = totals_row(results, wall);
    if !results.is_empty() {
        out.push('\n');
        out.push_str(&slowest(results, SLOWEST));
    }
    out.push_str(
        "\nEvery job: `civicload status` (`--incomplete`: only the unfinished ones; `--json`).",
    );
    out
}

/// The run's totals as a one-row table.
fn totals_row(results: &[JobResult], wall: Duration) -> String {
    let sum = |f: fn(&JobResult) -> u64| results.iter().map(f).sum::<u64>();
    let fetched = sum(|r| r.fetched);
    let verified = results.iter().filter(|r| r.verified).count();
    let failed = results
        .iter()
        .filter(|r| r.status == Outcome::Failed)
        .count();
    let secs = wall.as_secs_f64();
    let mut t = table();
    t.set_header(vec![
        "",
        "fetched",
        "created",
        "updated",
        "unchanged",
        "rejected",
        "seconds",
        "pages/s",
    ]);
    t.add_row(vec![
        Cell::new(format!(
            "TOTAL ({} jobs: {verified} verified, {failed} failed)",
            results.len()
        )),
        right(fetched),
        right(sum(|r| r.created)),
        right(sum(|r| r.updated)),
        right(sum(|r| r.unchanged)),
        right(sum(|r| r.rejected)),
        right(format!("{secs:.1}")),
        right(format!("{:.0}", per_second(fetched, secs))),
    ]);
    t.to_string()
}

/// The `n` jobs that took longest, slowest first.
fn slowest(results: &[JobResult], n: usize) -> String {
    let mut rows: Vec<&JobResult> = results.iter().collect();
    rows.sort_by(|a, b| {
        b.seconds
            .total_cmp(&a.seconds)
            .then_with(|| a.job().cmp(&b.job()))
    });
    let title = if rows.len() > n {
        format!("The {n} slowest of {} jobs:", rows.len())
    } else {
        "Jobs, slowest first:".to_string()
    };
    let mut t = table();
    t.set_header(vec![
        "job",
        "status",
        "fetched",
        "seconds",
        "pages/s",
        "verification",
    ]);
    for r in rows.into_iter().take(n) {
        // "verified" says it all; otherwise the error, or how the counts differ.
        let note = match (&r.error, r.verified) {
            (Some(e), _) => e.as_str(),
            (None, true) => "verified",
            (None, false) => r.verification.as_str(),
        };
        t.add_row(vec![
            Cell::new(r.job()),
            Cell::new(r.status),
            right(r.fetched),
            right(format!("{:.1}", r.seconds)),
            right(format!("{:.0}", r.pages_per_second())),
            Cell::new(shorten(note, 50)),
        ]);
    }
    format!("{title}\n{t}")
}

/// A job that did not end completed and verified, for the list after a run.
pub struct Unfinished {
    pub job: String,
    pub status: String,
    pub error: Option<String>,
}

impl From<&JobRow> for Unfinished {
    fn from(j: &JobRow) -> Self {
        Unfinished {
            job: format!("{}/{}", j.subdomain, j.document_type),
            status: j.status.to_string(),
            error: j.last_error.clone(),
        }
    }
}

impl From<&JobResult> for Unfinished {
    fn from(r: &JobResult) -> Self {
        Unfinished {
            job: r.job(),
            status: r.status.to_string(),
            error: r.error.clone(),
        }
    }
}

/// "N of M jobs are not `done`:", then one line per job with its status and error.
pub fn unfinished(jobs: &[Unfinished], of: usize, done: &str) -> String {
    let mut out = format!("{} of {of} jobs are not {done}:", jobs.len());
    for j in jobs {
        out.push_str(&format!("\n  {}: {}", j.job, j.status));
        if let Some(e) = &j.error {
            out.push_str(&format!(" ({e})"));
        }
    }
    out
}

/// Steps and their durations as aligned columns (the steps after a load, `maintain`).
pub fn steps<'a>(steps: impl IntoIterator<Item = (&'a str, f64, &'a str)>) -> String {
    let steps: Vec<_> = steps.into_iter().collect();
    let width = steps.iter().map(|s| s.0.chars().count()).max().unwrap_or(0);
    let lines: Vec<String> = steps
        .iter()
        .map(|(step, seconds, detail)| {
            let pad = width - step.chars().count();
            format!("{step}{:pad$}  {seconds:>7.1} s  {detail}", "")
                .trim_end()
                .to_string()
        })
        .collect();
    lines.join("\n")
}

/// A table that wraps its cells to the width of the terminal it is printed on (none when
/// stdout is not a terminal: a file or a pipe gets whole lines).
fn table() -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    if cfg!(test) {
        // Unit tests read whole lines, whatever terminal runs them.
        t.force_no_tty();
    }
    t
}

fn per_second(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
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
    let mut t = table();
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
        let eta = match (j.status, per_second, j.expected_count) {
            (JobStatus::Running, Some(r), Some(expected))
                if r > 0.0 && expected > j.pages_fetched =>
            {
                format!("{:.0} s", (expected - j.pages_fetched) as f64 / r)
            }
            _ => String::new(),
        };
        t.add_row(vec![
            Cell::new(format!("{}/{}", j.subdomain, j.document_type)),
            Cell::new(j.status),
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
    let mut t = table();
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
            Cell::new(r.document_type),
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

/// A job's failure as its user reads it: what happened, then what to do about it.
pub fn with_advice(failure: &JobFailure) -> String {
    match failure {
        JobFailure::Load(e) => format!("{e}. Fix the database problem, then rerun the same command: the job continues from its last checkpoint."),
        JobFailure::Fetch { job, error } => format!(
            "{job}: {error}. Pages up to the last checkpoint are committed; rerun the same command (or add --resume) to continue from there{}.",
            if error.is_transient() { " once the source is reachable" } else { "" }
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: usize, seconds: f64, status: Outcome, verified: bool) -> JobResult {
        JobResult {
            subdomain: format!("town{n:02}.ca"),
            document_type: "minutes".into(),
            status,
            fetched: 100 * n as u64,
            created: 100 * n as u64,
            seconds,
            verified,
            ..JobResult::default()
        }
    }

    /// The first number of the TOTAL row, read as tests/pgbouncer.rs and resilience.rs do.
    fn total_fetched(summary: &str) -> i64 {
        let line = summary.lines().find(|l| l.contains("TOTAL")).unwrap();
        line.split('┆')
            .filter_map(|c| c.trim().parse().ok())
            .next()
            .unwrap()
    }

    #[test]
    fn the_summary_of_many_jobs_is_the_totals_and_the_ten_slowest() {
        let mut results: Vec<JobResult> = (1..=40)
            .map(|n| job(n, n as f64, Outcome::Completed, true))
            .collect();
        results[0].status = Outcome::Failed;
        results[0].verified = false;
        let out = summary(&results, Duration::from_secs(50));
        assert_eq!(total_fetched(&out), (1..=40).map(|n| 100 * n).sum::<i64>());
        assert!(
            out.contains("TOTAL (40 jobs: 39 verified, 1 failed)"),
            "{out}"
        );
        assert!(out.contains("The 10 slowest of 40 jobs:"), "{out}");
        let listed: Vec<usize> = (1..=40)
            .filter(|n| out.contains(&format!("town{n:02}.ca")))
            .collect();
        assert_eq!(listed, (31..=40).collect::<Vec<_>>(), "{out}");
        assert!(out.contains("`civicload status`"));
        assert!(out.lines().all(|l| l.chars().count() <= 120), "{out}");
    }

    #[test]
    fn a_few_jobs_are_all_listed_slowest_first() {
        let results = vec![
            job(1, 2.0, Outcome::Completed, true),
            job(2, 9.0, Outcome::Paused, false),
        ];
        let out = summary(&results, Duration::from_secs(10));
        assert!(out.contains("Jobs, slowest first:"), "{out}");
        let first = out.find("town02.ca").unwrap();
        assert!(first < out.find("town01.ca").unwrap(), "{out}");
        assert_eq!(total_fetched(&out), 300);
    }

    #[test]
    fn the_unfinished_list_names_each_job_its_status_and_error() {
        let mut failed = job(3, 1.0, Outcome::Failed, false);
        failed.error = Some("the source answered 404".into());
        let list = unfinished(
            &[
                Unfinished::from(&failed),
                Unfinished::from(&job(4, 1.0, Outcome::Paused, false)),
            ],
            9,
            "loaded and verified",
        );
        assert_eq!(
            list,
            "2 of 9 jobs are not loaded and verified:\n  town03.ca/minutes: failed (the source answered 404)\n  town04.ca/minutes: paused"
        );
    }

    #[test]
    fn steps_are_aligned_whatever_their_length() {
        let out = steps([
            (
                "search index idx_pages_search",
                12.34,
                "built (1.2 GB, fastupdate off)",
            ),
            (
                "VACUUM meeting_pages (analyzed during the load, TOAST left to autovacuum)",
                0.5,
                "",
            ),
            (
                "REFRESH MATERIALIZED VIEW meeting_page_stats",
                1.0,
                "concurrently",
            ),
        ]);
        let columns: Vec<usize> = out.lines().map(|l| l.find(" s").unwrap()).collect();
        assert!(columns.iter().all(|&c| c == columns[0]), "{out}");
        assert!(out.lines().nth(1).unwrap().ends_with("0.5 s"), "{out}");
    }
}
