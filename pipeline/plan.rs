//! Which jobs a command works on: `--subdomain` and `--document-type` turned into rows of
//! `backfill_jobs` (registered when new). Shared by `backfill` and `verify`.

use sqlx::PgPool;
use stages::store::{jobs, municipalities};
use stages::DocumentType;

use crate::exit::UsageError;

/// Registers the jobs for these municipalities (`all` = every synced one) and document
/// types, returning their ids. A subdomain that is not one, or `all` with no synced
/// municipality, is a usage error (exit 2); a database failure is not (exit 1).
pub async fn plan_jobs(
    pool: &PgPool,
    subdomains: &[String],
    document_type: Option<DocumentType>,
) -> anyhow::Result<Vec<i64>> {
    let doc_types: Vec<DocumentType> = match document_type {
        Some(d) => vec![d],
        None => DocumentType::ALL.to_vec(),
    };
    let mut municipality_ids = Vec::new();
    if subdomains.iter().any(|s| s == "all") {
        let all = municipalities::all(pool).await?;
        if all.is_empty() {
            return Err(UsageError("`--subdomain all` found no municipalities: load the list first with `civicload municipalities sync --from <sites URL or file>`".into()).into());
        }
        municipality_ids.extend(all.iter().map(|m| m.id));
    }
    for sub in subdomains.iter().filter(|s| s.as_str() != "all") {
        let sub = sub.trim().to_ascii_lowercase();
        if sub.is_empty() || sub.contains('/') || sub.contains(char::is_whitespace) {
            return Err(UsageError(format!(
                "{sub:?} is not a municipality subdomain (expected something like oakland.ca)"
            ))
            .into());
        }
        municipality_ids.push(municipalities::ensure(pool, &sub).await?);
    }
    municipality_ids.sort_unstable();
    municipality_ids.dedup();
    let wanted: Vec<(i64, DocumentType)> = municipality_ids
        .iter()
        .flat_map(|&m| doc_types.iter().map(move |&d| (m, d)))
        .collect();
    Ok(jobs::ensure_many(pool, &wanted).await?)
}
