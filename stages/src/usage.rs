//! What reading the source costs: requests and body bytes, in all and per table, and failed
//! attempts by kind. Shared by every clone of a `SourceClient`, so a run (or `serve`'s
//! metrics) can read what it spent, and a job what its own table cost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Requests and body bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Spent {
    pub requests: u64,
    pub bytes: u64,
}

impl std::ops::Sub for Spent {
    type Output = Spent;
    fn sub(self, o: Spent) -> Spent {
        Spent {
            requests: self.requests.saturating_sub(o.requests),
            bytes: self.bytes.saturating_sub(o.bytes),
        }
    }
}

/// Why a request attempt failed (the label of `source_errors_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// 402 (civic.band's rate limit) or 429.
    RateLimited,
    /// Any other 4xx.
    Client,
    /// 5xx, e.g. Datasette's QueryInterrupted.
    Server,
    /// Connection refused, reset, timed out, body cut short.
    Transport,
    /// An answer that is not a valid page (bad JSON, `ok: false`, a cursor that stalls).
    InvalidPage,
    /// A redirect to another host (an unknown municipality).
    Redirected,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::RateLimited,
        ErrorKind::Client,
        ErrorKind::Server,
        ErrorKind::Transport,
        ErrorKind::InvalidPage,
        ErrorKind::Redirected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Client => "client_error",
            ErrorKind::Server => "server_error",
            ErrorKind::Transport => "transport",
            ErrorKind::InvalidPage => "invalid_page",
            ErrorKind::Redirected => "redirected",
        }
    }

    fn index(self) -> usize {
        ErrorKind::ALL
            .iter()
            .position(|k| *k == self)
            .expect("listed")
    }
}

/// The counters (one per client and its clones).
#[derive(Debug, Default)]
pub struct SourceUsage {
    requests: AtomicU64,
    bytes: AtomicU64,
    errors: [AtomicU64; 6],
    per_table: Mutex<HashMap<String, Spent>>,
}

impl SourceUsage {
    /// Counts one answered request of `bytes` body bytes for `table_key` (`subdomain/table`).
    pub fn record(&self, table_key: &str, bytes: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        let mut per = self.per_table.lock().unwrap_or_else(|e| e.into_inner());
        let slot = per.entry(table_key.to_string()).or_default();
        slot.requests += 1;
        slot.bytes += bytes;
    }

    /// Counts a failed attempt.
    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Everything spent so far.
    pub fn total(&self) -> Spent {
        Spent {
            requests: self.requests.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    /// What one table (`subdomain/table`) cost so far.
    pub fn table(&self, table_key: &str) -> Spent {
        let per = self.per_table.lock().unwrap_or_else(|e| e.into_inner());
        per.get(table_key).copied().unwrap_or_default()
    }

    /// Failed attempts by kind.
    pub fn errors(&self) -> Vec<(ErrorKind, u64)> {
        ErrorKind::ALL
            .iter()
            .map(|k| (*k, self.errors[k.index()].load(Ordering::Relaxed)))
            .collect()
    }
}

/// The key of a table in the per-table counters.
pub fn table_key(subdomain: &str, table: &str) -> String {
    format!("{subdomain}/{table}")
}
