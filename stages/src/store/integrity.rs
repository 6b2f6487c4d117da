//! Foreign-key checks of a bulk load, done once per load instead of once per page.
//!
//! `meeting_pages` references `meeting_documents` and `municipalities`. PostgreSQL checks
//! each inserted row with a query of its own (an AFTER trigger per row and per key): about
//! 20% of the server's work in a COPY of pages. A bulk load whose role may set
//! `session_replication_role` COPYs new pages as a replica session, which skips those
//! triggers for that statement only (nothing to undo after a crash). The references hold
//! by construction (the load takes each document id from the same transaction), and
//! [`dangling_pages`] proves it after the load with one anti-join over the table.

use sqlx::PgPool;

use crate::store::sql::{self, autocommit};

/// What a role that may not set `session_replication_role` can be given so that its bulk
/// loads check the references once after the load (the log and `health` say it).
pub const GRANT_HINT: &str = "`GRANT SET ON PARAMETER session_replication_role TO <role>` (PostgreSQL 15+) lets a bulk load check them once after the load (~20% less server work per page)";

/// True when the connected role may set `session_replication_role`: a superuser, or on
/// PostgreSQL 15+ a role granted `SET ON PARAMETER session_replication_role`.
pub async fn may_skip_fk_checks(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let (superuser, version): (bool, i32) = sql::query_as(
        "SELECT rolsuper, current_setting('server_version_num')::int
         FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(autocommit(pool))
    .await?;
    if superuser || version < 150_000 {
        return Ok(superuser);
    }
    // has_parameter_privilege exists from PostgreSQL 15 on: asked separately so that the
    // first query parses everywhere.
    let (granted,): (bool,) =
        sql::query_as("SELECT has_parameter_privilege('session_replication_role', 'SET')")
            .fetch_one(autocommit(pool))
            .await?;
    Ok(granted)
}

/// Pages whose document or municipality does not exist, for one (municipality, document).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dangling {
    /// The municipality's subdomain, or `municipality <id>` when it is the missing one.
    pub municipality: String,
    pub document_id: i64,
    pub pages: i64,
}

/// Every page's document and municipality exist: the proof a bulk load gives for the
/// foreign-key checks it skipped. Returns the first 20 dangling (municipality, document)
/// groups with the total number of dangling pages (empty and 0 when every reference
/// holds). One sequential scan with hash joins, on one core (no parallel workers): after a
/// load it runs beside the search-index build, which leaves the other core idle.
pub async fn dangling_pages(pool: &PgPool) -> Result<(Vec<Dangling>, i64), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sql::query("SET LOCAL max_parallel_workers_per_gather = 0")
        .execute(&mut *tx)
        .await?;
    let rows: Vec<(String, i64, i64, i64)> = sql::query_as(
        "SELECT coalesce(m.subdomain, 'municipality ' || p.municipality_id), p.document_id,
                count(*), (sum(count(*)) OVER ())::bigint
         FROM meeting_pages p
         LEFT JOIN municipalities m ON m.id = p.municipality_id
         WHERE m.id IS NULL
            OR NOT EXISTS (SELECT 1 FROM meeting_documents d WHERE d.id = p.document_id)
         GROUP BY 1, 2 ORDER BY 1, 2 LIMIT 20",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let total = rows.first().map_or(0, |r| r.3);
    let groups = rows
        .into_iter()
        .map(|(municipality, document_id, pages, _)| Dangling {
            municipality,
            document_id,
            pages,
        })
        .collect();
    Ok((groups, total))
}
