//! Upkeep of civic-observer's tables (`maintain`, `health`, `search-bench` with
//! `--target civic-observer`): statistics, the G1 GIN indexes (built only when missing, and
//! only CONCURRENTLY once the table has rows), the G2 BM25 index (the operators' business:
//! only reported), and the application's search, explained.

use sqlx::PgPool;

use crate::store::observer::types::Generation;
use crate::store::sql::{self, autocommit};

/// An index on one of the application's tables.
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize)]
pub struct IndexFact {
    pub table: String,
    pub index: String,
    pub method: String,
    pub valid: bool,
    pub bytes: i64,
    pub definition: String,
}

/// A table of the application: rows, dead rows, size, last (auto)vacuum and analyze.
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize)]
pub struct TableFact {
    pub table: String,
    pub live_rows: i64,
    pub dead_rows: i64,
    pub total_bytes: i64,
    pub last_vacuumed: Option<chrono::DateTime<chrono::Utc>>,
    pub last_analyzed: Option<chrono::DateTime<chrono::Utc>>,
}

const TABLES: &[&str] = &[
    "municipalities_muni",
    "meetings_meetingdocument",
    "meetings_meetingpage",
    "notebooks_notebookentry",
];

pub async fn tables(pool: &PgPool) -> Result<Vec<TableFact>, sqlx::Error> {
    sql::query_as(
        "SELECT s.relname::text AS table, s.n_live_tup AS live_rows, s.n_dead_tup AS dead_rows,
                pg_total_relation_size(s.relid) AS total_bytes,
                greatest(s.last_vacuum, s.last_autovacuum) AS last_vacuumed,
                greatest(s.last_analyze, s.last_autoanalyze) AS last_analyzed
         FROM pg_stat_user_tables s
         WHERE s.relid = ANY(SELECT to_regclass(t) FROM unnest($1::text[]) AS t)
         ORDER BY 1",
    )
    .bind(TABLES)
    .fetch_all(autocommit(pool))
    .await
}

pub async fn indexes(pool: &PgPool) -> Result<Vec<IndexFact>, sqlx::Error> {
    sql::query_as(
        "SELECT t.relname::text AS table, c.relname::text AS index, a.amname::text AS method,
                i.indisvalid AS valid, pg_relation_size(c.oid) AS bytes,
                pg_get_indexdef(c.oid) AS definition
         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid
         JOIN pg_am a ON a.oid = c.relam
         WHERE i.indrelid IN (to_regclass('meetings_meetingpage'), to_regclass('meetings_meetingdocument'))
         ORDER BY 1, 2",
    )
    .fetch_all(autocommit(pool))
    .await
}

/// Whether `meetings_meetingpage` holds any page.
pub async fn has_pages(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sql::query_scalar("SELECT EXISTS (SELECT 1 FROM meetings_meetingpage)")
        .fetch_one(autocommit(pool))
        .await
}

/// What `maintain` did.
#[derive(Clone, Debug, Default)]
pub struct Upkeep {
    pub built: Vec<String>,
    pub notes: Vec<String>,
}

/// VACUUM (ANALYZE) of the tables civicload writes; in G1 a GIN index that is missing on
/// a vector column is built (CONCURRENTLY once the table has rows: a plain build would
/// lock the application's writes for hours), an invalid one is reported.
pub async fn maintain(pool: &PgPool, generation: Generation) -> Result<Upkeep, sqlx::Error> {
    let mut done = Upkeep::default();
    for statement in [
        "VACUUM (ANALYZE) meetings_meetingpage",
        "VACUUM (ANALYZE) meetings_meetingdocument",
        "VACUUM (ANALYZE) municipalities_muni",
    ] {
        sqlx::raw_sql(statement).execute(pool).await?;
    }
    let found = indexes(pool).await?;
    let gin_on = |table: &str, column: &str| {
        found
            .iter()
            .find(|i| i.table == table && i.method == "gin" && i.definition.contains(column))
    };
    match generation {
        Generation::G1 => {
            let rows = has_pages(pool).await?;
            let wanted = [
                (
                    "meetings_meetingpage",
                    "search_vector",
                    if rows {
                        "CREATE INDEX CONCURRENTLY IF NOT EXISTS meetings_meetingpage_search_vector_idx ON meetings_meetingpage USING gin (search_vector)"
                    } else {
                        "CREATE INDEX IF NOT EXISTS meetings_meetingpage_search_vector_idx ON meetings_meetingpage USING gin (search_vector)"
                    },
                ),
                (
                    "meetings_meetingdocument",
                    "meeting_name_search_vector",
                    if rows {
                        "CREATE INDEX CONCURRENTLY IF NOT EXISTS meetings_meetingdocument_name_search_vector_idx ON meetings_meetingdocument USING gin (meeting_name_search_vector)"
                    } else {
                        "CREATE INDEX IF NOT EXISTS meetings_meetingdocument_name_search_vector_idx ON meetings_meetingdocument USING gin (meeting_name_search_vector)"
                    },
                ),
            ];
            for (table, column, build) in wanted {
                match gin_on(table, column) {
                    Some(i) if i.valid => {}
                    Some(i) => done.notes.push(format!(
                        "the GIN index {} on {table}.{column} is invalid (an interrupted build): rebuild it with REINDEX INDEX CONCURRENTLY {}",
                        i.index, i.index
                    )),
                    None => {
                        sqlx::raw_sql(build).execute(pool).await?;
                        done.built.push(format!("GIN on {table}.{column}"));
                    }
                }
            }
        }
        Generation::G2 => {
            if !found.iter().any(|i| i.method == "bm25") {
                done.notes.push("no BM25 index on meetings_meetingpage: building it is the operators' business (pg_search), outside the application's migrations".into());
            }
        }
    }
    Ok(done)
}

/// The application's search for `query`, explained (EXPLAIN ANALYZE, JSON): G1's
/// `search_vector @@ websearch_to_tsquery('simple', q)` joined to documents and
/// municipalities, newest first; in G2 its BM25 query needs pg_search, so without a BM25
/// index the same full-text match is computed from `text` (what a search costs then).
pub async fn explain_search(
    pool: &PgPool,
    generation: Generation,
    query: &str,
) -> Result<serde_json::Value, sqlx::Error> {
    let statement = match generation {
        Generation::G1 => {
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)
             SELECT p.id FROM meetings_meetingpage p
             JOIN meetings_meetingdocument d ON d.id = p.document_id
             JOIN municipalities_muni m ON m.id = d.municipality_id
             WHERE p.search_vector @@ websearch_to_tsquery('simple', $1)
             ORDER BY d.meeting_date DESC LIMIT 100"
        }
        Generation::G2 => {
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)
             SELECT p.id FROM meetings_meetingpage p
             WHERE to_tsvector('simple', unaccent(p.text)) @@ websearch_to_tsquery('simple', $1)
             ORDER BY p.meeting_date DESC, p.id LIMIT 100"
        }
    };
    let mut tx = pool.begin().await?;
    let plan: sqlx::types::Json<serde_json::Value> = sql::query_scalar(statement)
        .bind(query)
        .fetch_one(&mut *tx)
        .await?;
    tx.rollback().await?;
    Ok(plan.0)
}

/// Merges the pending lists of the GIN indexes on `meetings_meetingpage` into their
/// trees (`gin_clean_pending_list`, what VACUUM does; the index owner's right): returns
/// the pending pages merged. Run beside a G1 load, so the merging is not done by a batch
/// while it holds the trigger switch's lock.
pub async fn clean_pending_lists(pool: &PgPool) -> Result<i64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // The merge sorts what it reads in maintenance_work_mem: a whole list at once.
    sql::query("SELECT set_config('maintenance_work_mem', '256MB', true)")
        .execute(&mut *tx)
        .await?;
    let merged = sql::query_scalar(
        "SELECT coalesce(sum(gin_clean_pending_list(i.indexrelid)), 0)::bigint
         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
         WHERE i.indrelid = to_regclass('meetings_meetingpage') AND a.amname = 'gin' AND i.indisvalid",
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(merged)
}
