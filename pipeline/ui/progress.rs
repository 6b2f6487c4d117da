//! Progress of long work: bars per job and overall on a terminal, plain periodic log lines
//! otherwise (CI, cron, a pipe). `vectorize` draws its own single bar.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use stages::load::{BatchOutcome, LoadObserver};
use stages::JobKey;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// Shared progress of one backfill run.
pub struct Progress {
    bars: Option<Bars>,
    pages: AtomicU64,
    jobs_done: AtomicU64,
    jobs_total: u64,
    expected_pages: Option<u64>,
    started: Instant,
}

struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    jobs: Mutex<HashMap<i64, ProgressBar>>,
}

impl Progress {
    /// Bars when stderr is a terminal (and not under CI), log lines otherwise.
    pub fn new(
        jobs_total: u64,
        expected_pages: Option<u64>,
        multi: Option<MultiProgress>,
    ) -> Arc<Self> {
        let bars = multi.map(|multi| {
            let overall = match expected_pages {
                Some(n) => multi.add(ProgressBar::new(n)).with_style(
                    ProgressStyle::with_template("{prefix:>24} [{bar:30}] {human_pos}/{human_len} pages {rate} eta {eta} {msg}")
                        .expect("static template").with_key("rate", rate)
                        .progress_chars("=> "),
                ),
                None => multi.add(ProgressBar::no_length()).with_style(
                    ProgressStyle::with_template("{prefix:>24} {spinner} {human_pos} pages {rate} {msg}").expect("static template").with_key("rate", rate),
                ),
            };
            overall.set_prefix("all jobs");
            overall.enable_steady_tick(Duration::from_millis(250));
            Bars { multi, overall, jobs: Mutex::new(HashMap::new()) }
        });
        let p = Arc::new(Progress {
            bars,
            pages: AtomicU64::new(0),
            jobs_done: AtomicU64::new(0),
            jobs_total,
            expected_pages,
            started: Instant::now(),
        });
        p.set_message();
        p
    }

    /// The MultiProgress to draw on, when stderr is an interactive terminal. Log lines are
    /// written above it until [`Progress::finish`].
    pub fn terminal() -> Option<MultiProgress> {
        let multi = super::term::stderr_is_interactive()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4)));
        super::log::set_bars(multi.clone());
        multi
    }

    pub fn job_started(&self, job: &JobKey, already: u64) {
        if let Some(b) = &self.bars {
            let bar = b.multi.add(ProgressBar::no_length()).with_style(
                ProgressStyle::with_template(
                    "{prefix:>24} {spinner} {human_pos} pages {rate} {msg}",
                )
                .expect("static template")
                .with_key("rate", rate),
            );
            bar.set_prefix(truncate(&job.to_string(), 24));
            bar.set_position(already);
            bar.enable_steady_tick(Duration::from_millis(250));
            b.jobs
                .lock()
                .expect("progress lock")
                .insert(job.job_id, bar);
        } else {
            info!(job = %job, resumed_at = already, "Job started.");
        }
    }

    /// Gives a job's bar its length once the source's count is known.
    pub fn job_expected(&self, job: &JobKey, rows: u64) {
        if let Some(b) = &self.bars {
            if let Some(bar) = b.jobs.lock().expect("progress lock").get(&job.job_id) {
                bar.set_length(rows);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>24} [{bar:30}] {human_pos}/{human_len} {rate} eta {eta} {msg}",
                    )
                    .expect("static template")
                    .with_key("rate", rate)
                    .progress_chars("=> "),
                );
            }
        }
    }

    /// A job's end: a log line, at debug level on a terminal (the bars show the progress,
    /// and the summary at the end names every job that did not end well).
    pub fn job_finished(&self, job: &JobKey, summary: &str) {
        self.jobs_done.fetch_add(1, Ordering::Relaxed);
        self.set_message();
        if let Some(b) = &self.bars {
            if let Some(bar) = b.jobs.lock().expect("progress lock").remove(&job.job_id) {
                bar.finish_and_clear();
                b.multi.remove(&bar);
            }
            debug!(job = %job, "Job finished: {summary}");
        } else {
            info!(job = %job, "Job finished: {summary}");
        }
    }

    fn set_message(&self) {
        if let Some(b) = &self.bars {
            b.overall.set_message(format!(
                "jobs {}/{}",
                self.jobs_done.load(Ordering::Relaxed),
                self.jobs_total
            ));
        }
    }

    /// Logs a line every `every` until cancelled, when there are no bars.
    pub async fn log_periodically(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        if self.bars.is_some() {
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let pages = self.pages.load(Ordering::Relaxed);
            let secs = self.started.elapsed().as_secs_f64().max(0.001);
            let rate = pages as f64 / secs;
            let eta = self
                .expected_pages
                .filter(|&n| n > pages && rate > 0.0)
                .map(|n| format!(", eta {:.0} s", (n - pages) as f64 / rate))
                .unwrap_or_default();
            info!(
                "Progress: {pages} pages in {secs:.0} s ({rate:.0} pages/s{eta}), jobs {}/{} done.",
                self.jobs_done.load(Ordering::Relaxed),
                self.jobs_total
            );
        }
    }

    /// Pages committed so far, and the pages expected in all (when known).
    pub fn pages(&self) -> (u64, Option<u64>) {
        (self.pages.load(Ordering::Relaxed), self.expected_pages)
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bars {
            b.overall.finish_and_clear();
            let _ = b.multi.clear();
            super::log::set_bars(None);
        }
    }
}

impl LoadObserver for Progress {
    fn batch_committed(&self, job: &JobKey, outcome: &BatchOutcome) {
        self.pages.fetch_add(outcome.fetched, Ordering::Relaxed);
        if let Some(b) = &self.bars {
            b.overall.inc(outcome.fetched);
            if let Some(bar) = b.jobs.lock().expect("progress lock").get(&job.job_id) {
                bar.inc(outcome.fetched);
            }
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let head: String = s.chars().take(n - 1).collect();
        format!("{head}…")
    }
}

/// Pages per second without decimals (indicatif's own `per_sec` prints four).
fn rate(state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write) {
    let _ = write!(w, "{:.0}/s", state.per_sec());
}
