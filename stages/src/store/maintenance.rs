//! SQL for keeping the database healthy after (and between) loads: VACUUM / ANALYZE,
//! REINDEX CONCURRENTLY, the `meeting_page_stats` refresh, table sizes, and the statistics
//! behind `civicload health` (seed 004's validation report).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::search::SearchError;
use super::sql::{self, autocommit};

/// The tables civicload owns, biggest first.
pub const TABLES: [&str; 5] = [
    "meeting_pages",
    "meeting_documents",
    "page_rejects",
    "backfill_jobs",
    "municipalities",
];

const ADVICE: &str = "Rerun `civicload maintain`; every step is safe to repeat.";

fn err(step: &'static str, object: &'static str) -> impl FnOnce(sqlx::Error) -> SearchError {
    move |cause| SearchError::Sql {
        step,
        object,
        advice: ADVICE,
        cause,
    }
}

/// One literal statement per table: VACUUM takes no bind parameters, and a statement is
/// never built from input.
fn vacuum_sql(table: &str, analyze: bool, heap_only: bool) -> Option<&'static str> {
    Some(match (table, analyze, heap_only) {
        // Without the TOAST table: PostgreSQL 14 and later.
        ("meeting_pages", true, true) => "VACUUM (ANALYZE, PROCESS_TOAST FALSE) meeting_pages",
        ("meeting_pages", false, true) => "VACUUM (PROCESS_TOAST FALSE) meeting_pages",
        ("meeting_pages", true, false) => "VACUUM (ANALYZE) meeting_pages",
        ("meeting_pages", false, false) => "VACUUM meeting_pages",
        ("meeting_documents", true, _) => "VACUUM (ANALYZE) meeting_documents",
        ("meeting_documents", false, _) => "VACUUM meeting_documents",
        ("page_rejects", true, _) => "VACUUM (ANALYZE) page_rejects",
        ("page_rejects", false, _) => "VACUUM page_rejects",
        ("backfill_jobs", true, _) => "VACUUM (ANALYZE) backfill_jobs",
        ("backfill_jobs", false, _) => "VACUUM backfill_jobs",
        ("municipalities", true, _) => "VACUUM (ANALYZE) municipalities",
        ("municipalities", false, _) => "VACUUM municipalities",
        _ => return None,
    })
}

/// What a VACUUM covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Toast {
    /// The table and its TOAST table.
    Included,
    /// The table alone (where the server can; older ones vacuum both). Right after a bulk
    /// load the TOAST rows are all freshly inserted: vacuuming them only sets visibility
    /// bits no query reads, yet it is most of the work (80% of the pages), and autovacuum
    /// visits them later anyway.
    Skipped,
}

/// VACUUM (with ANALYZE when asked) one of civicload's tables. VACUUM cannot run inside a
/// transaction block, so it goes over the simple query protocol on its own connection.
pub async fn vacuum(
    conn: &mut PgConnection,
    table: &'static str,
    analyze: bool,
    toast: Toast,
) -> Result<(), SearchError> {
    let heap_only = toast == Toast::Skipped
        && table == "meeting_pages"
        && sql::query_scalar::<bool>("SELECT current_setting('server_version_num')::int >= 140000")
            .fetch_one(autocommit(&mut *conn))
            .await
            .map_err(err("VACUUM", table))?;
    let sql = vacuum_sql(table, analyze, heap_only).expect("a civicload table");
    sqlx::raw_sql(sql)
        .execute(conn)
        .await
        .map_err(err("VACUUM", table))?;
    Ok(())
}

/// The storage option a bulk load sets on `meeting_pages` (and its TOAST table) while it
/// runs, which [`resume_pages_autovacuum`] removes.
pub const AUTOVACUUM_PAUSED: &str = "autovacuum_enabled=false";

/// Pauses autovacuum on `meeting_pages` for a bulk load. The table grows by ~10,000 pages a
/// second: autovacuum would vacuum and analyze it again and again meanwhile (an ANALYZE of
/// the vectors costs ~20 s of CPU at 1M pages), work the growing table makes obsolete at
/// once, taken from the load. The load analyzes the table itself near its end, and the
/// phase after it vacuums it and resumes autovacuum. A storage option, not a server
/// setting: it outlives a killed load, so the resumed load (or `civicload maintain`) ends
/// it, and `civicload health` warns while it lasts.
///
/// A partitioned `meeting_pages` (migration 0010) holds no storage options: its partitions do.
pub async fn pause_pages_autovacuum(pool: &PgPool) -> Result<(), SearchError> {
    super::partitions::alter_page_tables(
        pool,
        "ALTER TABLE %I SET (autovacuum_enabled = false, toast.autovacuum_enabled = false)",
    )
    .await
}

/// Ends [`pause_pages_autovacuum`]; true when it was paused.
pub async fn resume_pages_autovacuum(pool: &PgPool) -> Result<bool, SearchError> {
    let paused: bool = sql::query_scalar(
        "SELECT coalesce(bool_or($1 = ANY(reloptions)), false) FROM pg_class
         WHERE oid = 'meeting_pages'::regclass
            OR oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'meeting_pages'::regclass)",
    )
    .bind(AUTOVACUUM_PAUSED)
    .fetch_one(autocommit(pool))
    .await
    .map_err(err("reading the storage options", "meeting_pages"))?;
    if paused {
        super::partitions::alter_page_tables(
            pool,
            "ALTER TABLE %I RESET (autovacuum_enabled, toast.autovacuum_enabled)",
        )
        .await?;
    }
    Ok(paused)
}

/// `ANALYZE meeting_pages` on a connection of the pool (it runs in a transaction, unlike
/// VACUUM).
pub async fn analyze_pages(pool: &sqlx::PgPool) -> Result<(), SearchError> {
    sqlx::raw_sql("ANALYZE meeting_pages")
        .execute(pool)
        .await
        .map_err(err("ANALYZE", "meeting_pages"))?;
    Ok(())
}

/// A plain VACUUM that skips the table when another session holds a conflicting lock
/// (another VACUUM, a concurrent index build of a maintain run): `vectorize` vacuums
/// between chunks only to reuse space, and must never wait in a lock queue that a
/// concurrent REINDEX/CREATE INDEX CONCURRENTLY in turn waits on. Returns nothing either
/// way; the next chunk's VACUUM or the final one catches up.
pub async fn vacuum_unless_busy(
    conn: &mut PgConnection,
    table: &'static str,
) -> Result<(), SearchError> {
    let sql = match table {
        "meeting_pages" => "VACUUM (SKIP_LOCKED) meeting_pages",
        "meeting_documents" => "VACUUM (SKIP_LOCKED) meeting_documents",
        _ => return vacuum(conn, table, false, Toast::Included).await,
    };
    sqlx::raw_sql(sql)
        .execute(conn)
        .await
        .map_err(err("VACUUM", table))?;
    Ok(())
}

/// An index of a civicload table.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct IndexInfo {
    pub table: String,
    pub index: String,
    pub method: String,
    pub valid: bool,
    pub bytes: i64,
}

/// Every index of civicload's tables.
pub async fn indexes(pool: &PgPool) -> Result<Vec<IndexInfo>, SearchError> {
    sql::query_as(
        "SELECT t.relname::text AS table, c.relname::text AS index, am.amname::text AS method,
                i.indisvalid AS valid, pg_relation_size(c.oid) AS bytes
         FROM pg_index i
         JOIN pg_class c ON c.oid = i.indexrelid
         JOIN pg_class t ON t.oid = i.indrelid
         JOIN pg_am am ON am.oid = c.relam
         WHERE t.relnamespace = 'public'::regnamespace AND t.relname = ANY($1)
         ORDER BY t.relname, c.relname",
    )
    .bind(&TABLES[..])
    .fetch_all(autocommit(pool))
    .await
    .map_err(err("listing indexes", "pg_index"))
}

/// Leftovers of an interrupted REINDEX CONCURRENTLY (`*_ccnew`, `*_ccold`): invalid
/// indexes that every write still has to maintain. Returns their names after dropping them.
pub async fn drop_reindex_leftovers(
    pool: &PgPool,
    conn: &mut PgConnection,
) -> Result<Vec<String>, SearchError> {
    let leftovers: Vec<String> = indexes(pool)
        .await?
        .into_iter()
        .filter(|i| !i.valid && (i.index.contains("_ccnew") || i.index.contains("_ccold")))
        .map(|i| i.index)
        .collect();
    for name in &leftovers {
        // The name comes from the catalog, quoted by the server (%I), never from input.
        let statement: String =
            sql::query_scalar("SELECT format('DROP INDEX CONCURRENTLY IF EXISTS %I', $1::text)")
                .bind(name)
                .fetch_one(autocommit(&mut *conn))
                .await
                .map_err(err("dropping an interrupted rebuild", "pg_index"))?;
        sql::raw(&statement)
            .execute(&mut *conn)
            .await
            .map_err(err("dropping an interrupted rebuild", "pg_index"))?;
    }
    Ok(leftovers)
}

/// REINDEX INDEX CONCURRENTLY: rebuilds one index without blocking reads or writes.
pub async fn reindex_concurrently(conn: &mut PgConnection, index: &str) -> Result<(), SearchError> {
    // The name comes from the catalog (`indexes`), quoted by the server (%I).
    let statement: String =
        sql::query_scalar("SELECT format('REINDEX INDEX CONCURRENTLY %I', $1::text)")
            .bind(index)
            .fetch_one(autocommit(&mut *conn))
            .await
            .map_err(err("REINDEX CONCURRENTLY", "index"))?;
    sql::raw(&statement)
        .execute(&mut *conn)
        .await
        .map_err(err("REINDEX CONCURRENTLY", "index"))?;
    Ok(())
}

/// Refreshes `meeting_page_stats` without blocking its readers (its unique index allows
/// CONCURRENTLY).
pub async fn refresh_page_stats(conn: &mut PgConnection) -> Result<(), SearchError> {
    sqlx::raw_sql("REFRESH MATERIALIZED VIEW CONCURRENTLY meeting_page_stats")
        .execute(conn)
        .await
        .map_err(err("refreshing", "meeting_page_stats"))?;
    Ok(())
}

/// The sizes of one table, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RelSizes {
    /// The main heap (`pg_relation_size`): where dead row versions show up.
    pub heap: i64,
    /// Heap + TOAST + free space and visibility maps (`pg_table_size`).
    pub table: i64,
    /// All its indexes (`pg_indexes_size`).
    pub indexes: i64,
    /// Everything (`pg_total_relation_size`).
    pub total: i64,
}

/// Sizes of one of civicload's tables.
pub async fn rel_sizes(pool: &PgPool, table: &'static str) -> Result<RelSizes, SearchError> {
    let (heap, tbl, indexes, total): (i64, i64, i64, i64) = sql::query_as(
        "SELECT sum(pg_relation_size(r))::bigint, sum(pg_table_size(r))::bigint,
                sum(pg_indexes_size(r))::bigint, sum(pg_total_relation_size(r))::bigint
         FROM (SELECT to_regclass($1) AS r
               UNION ALL SELECT inhrelid FROM pg_inherits WHERE inhparent = to_regclass($1)) AS parts",
    )
    .bind(table)
    .fetch_one(autocommit(pool))
    .await
    .map_err(err("measuring", table))?;
    Ok(RelSizes {
        heap,
        table: tbl,
        indexes,
        total,
    })
}

/// What `pg_stat_user_tables`, `pg_statio_user_tables` and `pg_class` say about a table.
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize)]
pub struct TableStats {
    pub table: String,
    pub live_rows: i64,
    pub dead_rows: i64,
    pub modified_since_analyze: i64,
    pub last_vacuum: Option<DateTime<Utc>>,
    pub last_autovacuum: Option<DateTime<Utc>>,
    pub last_analyze: Option<DateTime<Utc>>,
    pub last_autoanalyze: Option<DateTime<Utc>>,
    /// Per-table storage options, e.g. `autovacuum_vacuum_scale_factor=0.05`.
    pub options: Vec<String>,
    pub heap_bytes: i64,
    pub table_bytes: i64,
    pub index_bytes: i64,
    pub total_bytes: i64,
    pub heap_blocks_hit: i64,
    pub heap_blocks_read: i64,
    pub index_blocks_hit: i64,
    pub index_blocks_read: i64,
}

/// Statistics of civicload's tables.
pub async fn table_stats(pool: &PgPool) -> Result<Vec<TableStats>, SearchError> {
    sql::query_as(
        "WITH tables AS (
            SELECT c.oid, c.relname::text AS name FROM pg_class c
            WHERE c.relnamespace = 'public'::regnamespace AND c.relname = ANY($1)
         ), parts AS (
            -- A partitioned table (meeting_pages, migration 0010) is the sum of its partitions.
            SELECT t.name, coalesce(h.inhrelid, t.oid) AS oid
            FROM tables t LEFT JOIN pg_inherits h ON h.inhparent = t.oid
         )
         SELECT p.name AS table, sum(s.n_live_tup)::bigint AS live_rows,
                sum(s.n_dead_tup)::bigint AS dead_rows,
                sum(s.n_mod_since_analyze)::bigint AS modified_since_analyze,
                max(s.last_vacuum) AS last_vacuum, max(s.last_autovacuum) AS last_autovacuum,
                max(s.last_analyze) AS last_analyze, max(s.last_autoanalyze) AS last_autoanalyze,
                array(SELECT DISTINCT o FROM parts q JOIN pg_class k ON k.oid = q.oid,
                      unnest(k.reloptions) AS o WHERE q.name = p.name ORDER BY o) AS options,
                sum(pg_relation_size(p.oid))::bigint AS heap_bytes,
                sum(pg_table_size(p.oid))::bigint AS table_bytes,
                sum(pg_indexes_size(p.oid))::bigint AS index_bytes,
                sum(pg_total_relation_size(p.oid))::bigint AS total_bytes,
                coalesce(sum(io.heap_blks_hit), 0)::bigint AS heap_blocks_hit,
                coalesce(sum(io.heap_blks_read), 0)::bigint AS heap_blocks_read,
                coalesce(sum(io.idx_blks_hit), 0)::bigint AS index_blocks_hit,
                coalesce(sum(io.idx_blks_read), 0)::bigint AS index_blocks_read
         FROM parts p
         JOIN pg_stat_user_tables s ON s.relid = p.oid
         LEFT JOIN pg_statio_user_tables io ON io.relid = p.oid
         GROUP BY p.name
         ORDER BY total_bytes DESC",
    )
    .bind(&TABLES[..])
    .fetch_all(autocommit(pool))
    .await
    .map_err(err("reading table statistics", "pg_stat_user_tables"))
}

/// What `pg_stat_user_indexes` says about an index.
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize)]
pub struct IndexStats {
    pub table: String,
    pub index: String,
    pub method: String,
    pub valid: bool,
    pub scans: i64,
    pub tuples_read: i64,
    pub bytes: i64,
    pub options: Vec<String>,
}

/// Usage of every index of civicload's tables.
pub async fn index_stats(pool: &PgPool) -> Result<Vec<IndexStats>, SearchError> {
    sql::query_as(
        "SELECT s.relname::text AS table, s.indexrelname::text AS index, am.amname::text AS method,
                i.indisvalid AS valid, s.idx_scan AS scans, s.idx_tup_read AS tuples_read,
                pg_relation_size(s.indexrelid) AS bytes, coalesce(c.reloptions, '{}') AS options
         FROM pg_stat_user_indexes s
         JOIN pg_index i ON i.indexrelid = s.indexrelid
         JOIN pg_class c ON c.oid = s.indexrelid
         JOIN pg_am am ON am.oid = c.relam
         WHERE s.schemaname = 'public' AND s.relname = ANY($1)
         ORDER BY s.relname, s.indexrelname",
    )
    .bind(&TABLES[..])
    .fetch_all(autocommit(pool))
    .await
    .map_err(err("reading index statistics", "pg_stat_user_indexes"))
}

/// Server-wide facts for the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ServerStats {
    pub database: String,
    pub database_bytes: i64,
    pub autovacuum: String,
    pub track_counts: String,
    pub shared_buffers: String,
    pub maintenance_work_mem: String,
    pub max_parallel_workers_per_gather: String,
    pub server_version: String,
}

/// Database size and the server settings the report shows.
pub async fn server_stats(pool: &PgPool) -> Result<ServerStats, SearchError> {
    let row: (String, i64, String, String, String, String, String, String) = sql::query_as(
        "SELECT current_database()::text, pg_database_size(current_database()),
                current_setting('autovacuum'), current_setting('track_counts'),
                current_setting('shared_buffers'), current_setting('maintenance_work_mem'),
                current_setting('max_parallel_workers_per_gather'), current_setting('server_version')",
    )
    .fetch_one(autocommit(pool))
    .await
    .map_err(err("reading server settings", "server"))?;
    Ok(ServerStats {
        database: row.0,
        database_bytes: row.1,
        autovacuum: row.2,
        track_counts: row.3,
        shared_buffers: row.4,
        maintenance_work_mem: row.5,
        max_parallel_workers_per_gather: row.6,
        server_version: row.7,
    })
}

/// Pages, documents and municipalities per `meeting_page_stats` (instant, where
/// `count(*)` over the pages would take minutes at scale), and the planner's estimate.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Counts {
    pub pages_in_stats: i64,
    pub documents_in_stats: i64,
    pub pages_estimated: i64,
}

/// Reads [`Counts`].
pub async fn counts(pool: &PgPool) -> Result<Counts, SearchError> {
    let (pages, docs, est): (Option<i64>, Option<i64>, Option<f32>) = sql::query_as(
        "SELECT (SELECT sum(page_count)::bigint FROM meeting_page_stats),
                (SELECT sum(document_count)::bigint FROM meeting_page_stats),
                (SELECT reltuples FROM pg_class WHERE oid = 'meeting_pages'::regclass)",
    )
    .fetch_one(autocommit(pool))
    .await
    .map_err(err("reading counts", "meeting_page_stats"))?;
    Ok(Counts {
        pages_in_stats: pages.unwrap_or(0),
        documents_in_stats: docs.unwrap_or(0),
        pages_estimated: est.map(|e| e.max(0.0) as i64).unwrap_or(0),
    })
}

/// The plan the application's search gets, without running it: (uses the search index,
/// plan summary). Cheap enough for a health check.
pub async fn search_plan_uses_index(
    pool: &PgPool,
    probe: &str,
) -> Result<(bool, String), SearchError> {
    let sql = format!("EXPLAIN (FORMAT JSON) {}", super::search::SEARCH_SQL);
    let plan: sqlx::types::Json<serde_json::Value> = sql::query_scalar(&sql)
        .bind(probe)
        .fetch_one(autocommit(pool))
        .await
        .map_err(err("planning the search", "meeting_pages"))?;
    let mut indexes = Vec::new();
    let mut nodes = Vec::new();
    collect_plan(&plan.0, &mut indexes, &mut nodes);
    let uses = indexes.iter().any(|i| is_page_search_index(i));
    Ok((uses, nodes.join(" > ")))
}

/// The page search index, or one of its partitions' (`meeting_pages_pN_search_vector_gin`,
/// migration 0010).
pub fn is_page_search_index(name: &str) -> bool {
    name == super::search::SEARCH_INDEXES[0].name
        || (name.starts_with("meeting_pages_p") && name.ends_with("_search_vector_gin"))
}

fn collect_plan(v: &serde_json::Value, indexes: &mut Vec<String>, nodes: &mut Vec<String>) {
    match v {
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_plan(x, indexes, nodes)),
        serde_json::Value::Object(o) => {
            if let Some(serde_json::Value::String(t)) = o.get("Node Type") {
                if o.get("Relation Name")
                    .and_then(|r| r.as_str())
                    .is_some_and(|r| r.starts_with("meeting_pages"))
                    || o.get("Index Name").is_some()
                {
                    nodes.push(t.clone());
                }
            }
            if let Some(serde_json::Value::String(i)) = o.get("Index Name") {
                indexes.push(i.clone());
            }
            for (k, x) in o {
                if k == "Plan" || k == "Plans" {
                    collect_plan(x, indexes, nodes);
                }
            }
        }
        _ => {}
    }
}

/// The planner's estimate of a table's rows (`reltuples`; 0 for a table never analyzed).
pub async fn estimated_rows(pool: &PgPool, table: &str) -> Result<i64, sqlx::Error> {
    let est: Option<Option<f32>> =
        sql::query_scalar("SELECT reltuples FROM pg_class WHERE oid = to_regclass($1)")
            .bind(table)
            .fetch_optional(autocommit(pool))
            .await?;
    Ok(est.flatten().map(|e| e.max(0.0) as i64).unwrap_or(0))
}
