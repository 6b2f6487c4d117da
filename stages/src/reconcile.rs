//! Reconcile: after a job, the expected row count from the source (exact, with the route
//! that gave it) against pages stored plus rejects.

use sqlx::PgPool;

use crate::batch::JobKey;
use crate::source::{SourceClient, SourceCount, SourceError};
use crate::store::jobs;
use crate::target::{StoredCount, Target};

/// The verdict on one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reconciliation {
    pub expected: Option<SourceCount>,
    pub stored: i64,
    pub rejected: i64,
    /// Of `stored`, pages gone upstream that are kept because users' notebook entries
    /// reference them (civic-observer only): stored = expected - rejected + kept.
    pub kept: i64,
    pub verdict: Verdict,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// stored + rejected == expected.
    Verified,
    /// Short by more than 1% (the seeds' rule): the job is failed.
    Short { missing: i64 },
    /// Any other difference, with its sign: positive = more here than upstream.
    Differs { difference: i64 },
    /// No exact expected count could be had.
    Unknown { reason: String },
}

impl Reconciliation {
    pub fn describe(&self) -> String {
        let route = self.expected.as_ref().map(|e| e.route).unwrap_or("none");
        let expected = self
            .expected
            .as_ref()
            .map(|e| e.rows.to_string())
            .unwrap_or_else(|| "?".into());
        let kept = match self.kept {
            0 => String::new(),
            n => format!(" (+ {n} gone upstream, kept for notebook entries)"),
        };
        match &self.verdict {
            Verdict::Verified => format!("verified: {} pages{kept} + {} rejects = {expected} expected ({route})", self.stored - self.kept, self.rejected),
            Verdict::Short { missing } => format!("short by {missing}: {} pages + {} rejects < {expected} expected ({route}); rerun the backfill, then `civicload verify --deep`", self.stored - self.kept, self.rejected),
            Verdict::Differs { difference } => format!("differs by {difference:+}: {} pages + {} rejects vs {expected} expected ({route}); `civicload verify --deep` shows which pages", self.stored - self.kept, self.rejected),
            Verdict::Unknown { reason } => format!("unverified: no exact expected count ({reason})"),
        }
    }
}

/// Compares stored + rejected with expected.
pub fn judge(expected: Option<&SourceCount>, stored: i64, rejected: i64) -> Verdict {
    let Some(expected) = expected else {
        return Verdict::Unknown {
            reason: "the source gave no count".into(),
        };
    };
    let expected = expected.rows as i64;
    let have = stored + rejected;
    if have == expected {
        Verdict::Verified
    } else if have < expected && (expected - have) * 100 > expected {
        Verdict::Short {
            missing: expected - have,
        }
    } else {
        Verdict::Differs {
            difference: have - expected,
        }
    }
}

/// Counts, judges and records the verdict on the job row.
/// `counted`: an exact count taken by the request right before the one that read the whole
/// table (None: the source is asked now).
pub async fn reconcile(
    pool: &PgPool,
    client: &SourceClient,
    target: &Target,
    job: &JobKey,
    counted: Option<SourceCount>,
) -> Result<Reconciliation, ReconcileError> {
    let count = match counted {
        Some(c) => Ok(c),
        None => {
            client
                .exact_count(&job.subdomain, job.document_type.table())
                .await
        }
    };
    let expected = match count {
        Ok(c) => Some(c),
        Err(e) if e.is_transient() || matches!(e, SourceError::RetriesExhausted { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let StoredCount { stored, kept } = target.count_pages(pool, job).await?;
    let rejected = jobs::count_rejects(pool, job.municipality_id, job.document_type).await?;
    let verdict = judge(expected.as_ref(), stored - kept, rejected);
    let r = Reconciliation {
        expected,
        stored,
        rejected,
        kept,
        verdict,
    };
    let failed = matches!(r.verdict, Verdict::Short { .. }).then(|| r.describe());
    jobs::record_verification(
        pool,
        job.job_id,
        r.expected.as_ref().map(|e| (e.rows as i64, e.route)),
        stored,
        r.verdict == Verdict::Verified,
        failed.as_deref(),
    )
    .await?;
    Ok(r)
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("counting pages in PostgreSQL failed: {0}")]
    Sql(#[from] sqlx::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(n: u64) -> SourceCount {
        SourceCount {
            rows: n,
            route: "test",
        }
    }

    #[test]
    fn verdicts_follow_the_one_percent_rule() {
        assert_eq!(judge(Some(&c(1000)), 990, 10), Verdict::Verified);
        assert_eq!(
            judge(Some(&c(1000)), 985, 0),
            Verdict::Short { missing: 15 }
        );
        assert_eq!(
            judge(Some(&c(1000)), 995, 0),
            Verdict::Differs { difference: -5 }
        );
        assert_eq!(
            judge(Some(&c(1000)), 1003, 0),
            Verdict::Differs { difference: 3 }
        );
        assert!(matches!(judge(None, 1, 0), Verdict::Unknown { .. }));
    }
}

/// The id-level comparison of one job's table with PostgreSQL.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeepReport {
    pub source_rows: usize,
    pub stored: usize,
    pub rejected: usize,
    /// Source ids neither stored nor recorded as rejects.
    pub missing: Vec<String>,
    /// Stored pages whose source id no longer exists upstream (re-OCR'd or deleted).
    pub stale: Vec<String>,
    /// Of `stale`, pages users' notebook entries reference (civic-observer): kept, with
    /// their entry counts.
    pub kept: Vec<(String, i64)>,
}

impl DeepReport {
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.stale.len() == self.kept.len()
    }

    pub fn describe(&self) -> String {
        let sample = |ids: &[String]| {
            let shown: Vec<&str> = ids.iter().take(5).map(String::as_str).collect();
            if ids.len() > 5 {
                format!(" ({}, …)", shown.join(", "))
            } else if ids.is_empty() {
                String::new()
            } else {
                format!(" ({})", shown.join(", "))
            }
        };
        let kept = match self.kept.len() {
            0 => String::new(),
            n => {
                let entries: i64 = self.kept.iter().map(|k| k.1).sum();
                let ids: Vec<String> = self.kept.iter().map(|k| k.0.clone()).collect();
                format!(
                    "; of those, {n} kept for {entries} notebook entries{}",
                    sample(&ids)
                )
            }
        };
        format!(
            "source {} rows; stored {} pages + {} rejects; missing here {}{}; stale here {}{}{kept}",
            self.source_rows,
            self.stored,
            self.rejected,
            self.missing.len(),
            sample(&self.missing),
            self.stale.len(),
            sample(&self.stale)
        )
    }
}

/// Compares the source's id set with the stored pages and rejects of one job.
pub async fn deep_compare(
    pool: &PgPool,
    client: &SourceClient,
    target: &Target,
    job: &JobKey,
) -> Result<DeepReport, ReconcileError> {
    let mut source = client
        .all_ids(&job.subdomain, job.document_type.table())
        .await?;
    source.sort_unstable();
    source.dedup();
    let stored = target.stored_ids(pool, job).await?;
    let rejected = jobs::rejected_source_ids(pool, job.municipality_id, job.document_type).await?;
    let mut report = compare_ids(&source, &stored, &rejected);
    report.kept = target.note_kept(pool, job, &report.stale).await?;
    Ok(report)
}

/// The set arithmetic of `deep_compare`, on sorted, deduplicated id lists.
pub fn compare_ids(source: &[String], stored: &[String], rejected: &[String]) -> DeepReport {
    use std::collections::HashSet;
    let source_set: HashSet<&str> = source.iter().map(String::as_str).collect();
    let accounted: HashSet<&str> = stored.iter().chain(rejected).map(String::as_str).collect();
    DeepReport {
        source_rows: source.len(),
        stored: stored.len(),
        rejected: rejected
            .iter()
            .filter(|r| source_set.contains(r.as_str()))
            .count(),
        missing: source
            .iter()
            .filter(|id| !accounted.contains(id.as_str()))
            .cloned()
            .collect(),
        stale: stored
            .iter()
            .filter(|id| !source_set.contains(id.as_str()))
            .cloned()
            .collect(),
        kept: Vec::new(),
    }
}

#[cfg(test)]
mod deep_tests {
    use super::*;

    fn v(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn missing_and_stale_ids_are_found() {
        let r = compare_ids(&v(&["a", "b", "c", "d"]), &v(&["a", "x"]), &v(&["d"]));
        assert_eq!(r.missing, v(&["b", "c"]));
        assert_eq!(r.stale, v(&["x"]));
        assert_eq!(r.rejected, 1);
        assert!(!r.is_exact());
        assert!(compare_ids(&v(&["a"]), &v(&["a"]), &[]).is_exact());
    }
}
