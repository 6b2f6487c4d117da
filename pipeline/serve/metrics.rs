//! `serve`'s counters and their Prometheus text rendering (`GET /metrics`): jobs by status
//! and the queue depth (read from the job table at scrape time, so they cover every
//! process), pages created / updated / deleted, what the source cost, source errors by
//! kind, webhooks by answer, and a histogram of webhook-to-verified seconds.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use stages::store::refresh::QueueStats;
use stages::usage::SourceUsage;

/// Upper bounds of the webhook-to-verified histogram, seconds.
const BUCKETS: [f64; 12] = [
    0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 900.0,
];

#[derive(Default)]
pub struct Metrics {
    pub pages_created: AtomicU64,
    pub pages_updated: AtomicU64,
    pub pages_deleted: AtomicU64,
    /// Refreshes by outcome (verified, unverified, failed, paused).
    refreshes: Mutex<Vec<(&'static str, u64)>>,
    /// Webhooks by HTTP status answered.
    webhooks: Mutex<Vec<(u16, u64)>>,
    histogram: Mutex<Histogram>,
}

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

fn bump<K: PartialEq + Copy>(list: &Mutex<Vec<(K, u64)>>, key: K) {
    let mut list = list.lock().unwrap_or_else(|e| e.into_inner());
    match list.iter_mut().find(|(k, _)| *k == key) {
        Some((_, n)) => *n += 1,
        None => list.push((key, 1)),
    }
}

impl Metrics {
    pub fn refresh_finished(&self, f: &crate::refresh::Finished) {
        let loaded = &f.report.loaded;
        self.pages_created
            .fetch_add(loaded.created, Ordering::Relaxed);
        self.pages_updated
            .fetch_add(loaded.updated, Ordering::Relaxed);
        self.pages_deleted
            .fetch_add(f.report.deleted, Ordering::Relaxed);
        bump(&self.refreshes, f.status.as_str());
    }

    pub fn webhook_answered(&self, status: u16) {
        bump(&self.webhooks, status);
    }

    /// One webhook-to-verified latency.
    pub fn observe_latency(&self, seconds: f64) {
        let mut h = self.histogram.lock().unwrap_or_else(|e| e.into_inner());
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    /// The Prometheus text exposition (version 0.0.4).
    pub fn render(&self, queue: &QueueStats, usage: &SourceUsage) -> String {
        let mut out = String::new();
        let o = &mut out;
        family(
            o,
            "civicload_jobs",
            "gauge",
            "Jobs in backfill_jobs by status (every process).",
        );
        for (status, n) in &queue.by_status {
            let _ = writeln!(o, "civicload_jobs{{status=\"{status}\"}} {n}");
        }
        family(
            o,
            "civicload_refresh_queue_depth",
            "gauge",
            "Jobs with a refresh requested and not yet done.",
        );
        let _ = writeln!(o, "civicload_refresh_queue_depth {}", queue.depth);
        family(
            o,
            "civicload_pages_total",
            "counter",
            "Pages changed by this process's refreshes.",
        );
        for (change, n) in [
            ("created", &self.pages_created),
            ("updated", &self.pages_updated),
            ("deleted", &self.pages_deleted),
        ] {
            let _ = writeln!(
                o,
                "civicload_pages_total{{change=\"{change}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        family(
            o,
            "civicload_refreshes_total",
            "counter",
            "Refreshes run by this process, by outcome.",
        );
        for (status, n) in self
            .refreshes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(o, "civicload_refreshes_total{{outcome=\"{status}\"}} {n}");
        }
        family(
            o,
            "civicload_webhooks_total",
            "counter",
            "Webhooks received, by HTTP status answered.",
        );
        for (code, n) in self
            .webhooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(o, "civicload_webhooks_total{{code=\"{code}\"}} {n}");
        }
        let spent = usage.total();
        family(
            o,
            "civicload_source_requests_total",
            "counter",
            "Requests answered by the source.",
        );
        let _ = writeln!(o, "civicload_source_requests_total {}", spent.requests);
        family(
            o,
            "civicload_source_bytes_total",
            "counter",
            "Body bytes received from the source.",
        );
        let _ = writeln!(o, "civicload_source_bytes_total {}", spent.bytes);
        family(
            o,
            "civicload_source_errors_total",
            "counter",
            "Failed source request attempts, by kind.",
        );
        for (kind, n) in usage.errors() {
            let _ = writeln!(
                o,
                "civicload_source_errors_total{{kind=\"{}\"}} {n}",
                kind.as_str()
            );
        }
        self.render_histogram(o);
        out
    }

    fn render_histogram(&self, o: &mut String) {
        let name = "civicload_webhook_to_verified_seconds";
        family(
            o,
            name,
            "histogram",
            "From the oldest webhook a refresh served to its verified end.",
        );
        let h = self.histogram.lock().unwrap_or_else(|e| e.into_inner());
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(o, "{name}_bucket{{le=\"{le}\"}} {}", h.counts[i]);
        }
        let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(o, "{name}_sum {}", h.sum);
        let _ = writeln!(o, "{name}_count {}", h.count);
    }
}

fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_is_cumulative() {
        let m = Metrics::default();
        for s in [0.1, 3.0, 3.0, 1000.0] {
            m.observe_latency(s);
        }
        let text = m.render(&QueueStats::default(), &SourceUsage::default());
        assert!(text.contains("civicload_webhook_to_verified_seconds_bucket{le=\"0.25\"} 1\n"));
        assert!(text.contains("civicload_webhook_to_verified_seconds_bucket{le=\"5\"} 3\n"));
        assert!(text.contains("civicload_webhook_to_verified_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(text.contains("civicload_webhook_to_verified_seconds_count 4\n"));
    }
}
