//! What describes civic-observer's tables and civicload's work on them, shared by the
//! target seam (`crate::target`) and the SQL here: no module of `store` needs `target`.

/// The schema civicload keeps its bookkeeping in when it writes civic-observer's tables.
pub const BOOKKEEPING_SCHEMA: &str = "civicload";

/// civic-observer's schema generation (CIVIC_OBSERVER.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Generation {
    /// Vector columns filled by a trigger, GIN indexes.
    G1,
    /// Denormalised columns on pages for an operator-built BM25 index.
    G2,
}

impl std::fmt::Display for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Generation::G1 => "G1 (search-vector columns)",
            Generation::G2 => "G2 (denormalised columns)",
        })
    }
}

/// What a count of a job's stored pages found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoredCount {
    /// Pages held for the job.
    pub stored: i64,
    /// Of those, pages gone upstream that are kept because notebook entries reference them.
    pub kept: i64,
}

/// What removing stale pages did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StaleOutcome {
    pub deleted: u64,
    /// Pages kept because notebook entries reference them: (page id, entries).
    pub kept: Vec<(String, i64)>,
}

/// Set while `clean_gin_pending_lists` runs in this process.
pub static GIN_CLEANER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
