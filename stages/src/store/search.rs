//! SQL for search readiness: building search vectors where they are missing (the work of
//! `civicload vectorize`), the GIN indexes built after a bulk load, and the application's
//! search query that `civicload search-bench` explains.
//!
//! The vector semantics live in the database (`civicload_page_vector`,
//! `civicload_name_vector`, migrations/0001), so the row triggers, `vectorize` and the
//! tests can never disagree about what a vector is.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use super::sql::{self, autocommit};

/// A failure of a search-readiness step, naming the table or index and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    // The cause is part of the message (not a `#[source]`), so the advice comes last.
    #[error("{step} on {object} failed: {cause}. {advice}")]
    Sql {
        step: &'static str,
        object: &'static str,
        advice: &'static str,
        cause: sqlx::Error,
    },
}

impl SearchError {
    pub(crate) fn sql(
        step: &'static str,
        object: &'static str,
        advice: &'static str,
    ) -> impl FnOnce(sqlx::Error) -> SearchError {
        move |cause| SearchError::Sql {
            step,
            object,
            advice,
            cause,
        }
    }

    /// A lost connection or a restarting server: the step can simply be run again.
    pub fn is_transient(&self) -> bool {
        match self {
            SearchError::Sql { cause, .. } => super::is_transient_sql(cause),
        }
    }
}

const RERUN_VECTORIZE: &str =
    "Nothing is lost: rerun `civicload vectorize` to continue where it stopped.";
pub(crate) const RERUN_MAINTAIN: &str =
    "Rerun `civicload maintain`: it rebuilds what is missing or invalid.";

/// Which vectors `vectorize` builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorTarget {
    /// `meeting_pages.search_vector` from `text`.
    Pages,
    /// `meeting_documents.meeting_name_search_vector` from `meeting_name` (CamelCase split).
    MeetingNames,
}

impl VectorTarget {
    /// The search index over this target's vectors.
    pub fn index(self) -> &'static SearchIndex {
        match self {
            VectorTarget::Pages => &SEARCH_INDEXES[0],
            VectorTarget::MeetingNames => &SEARCH_INDEXES[2],
        }
    }

    /// Meeting names first: few rows, and documents are what page results join to.
    pub const ALL: [VectorTarget; 2] = [VectorTarget::MeetingNames, VectorTarget::Pages];

    /// The table holding these vectors.
    pub fn table(self) -> &'static str {
        match self {
            VectorTarget::Pages => "meeting_pages",
            VectorTarget::MeetingNames => "meeting_documents",
        }
    }

    /// What the user calls these rows in progress lines.
    pub fn noun(self) -> &'static str {
        match self {
            VectorTarget::Pages => "pages",
            VectorTarget::MeetingNames => "meeting names",
        }
    }

    // Each query filters on the same predicate as the partial index
    // (`... IS NULL`) so the planner can use it: an index-only walk over the rows still to
    // do, in id order, however large the table.
    fn count_sql(self) -> &'static str {
        match self {
            VectorTarget::Pages => "SELECT count(*) FROM meeting_pages WHERE search_vector IS NULL",
            VectorTarget::MeetingNames => {
                "SELECT count(*) FROM meeting_documents WHERE meeting_name_search_vector IS NULL"
            }
        }
    }

    fn next_ids_sql(self) -> &'static str {
        match self {
            VectorTarget::Pages => {
                "SELECT id FROM meeting_pages WHERE search_vector IS NULL AND id > $1
                 ORDER BY id LIMIT $2"
            }
            VectorTarget::MeetingNames => {
                "SELECT id FROM meeting_documents WHERE meeting_name_search_vector IS NULL AND id > $1
                 ORDER BY id LIMIT $2"
            }
        }
    }

    // `AND ... IS NULL` again: a row another writer vectorized (or whose text changed and
    // the trigger recomputed) since we listed it is left alone, so the update is idempotent
    // and safe beside the load. Under READ COMMITTED a row updated concurrently is
    // re-checked against its newest version before it is written.
    fn update_sql(self) -> &'static str {
        match self {
            VectorTarget::Pages => {
                "UPDATE meeting_pages SET search_vector = civicload_page_vector(text)
                 WHERE id = ANY($1) AND search_vector IS NULL"
            }
            VectorTarget::MeetingNames => {
                "UPDATE meeting_documents SET meeting_name_search_vector = civicload_name_vector(meeting_name)
                 WHERE id = ANY($1) AND meeting_name_search_vector IS NULL"
            }
        }
    }
}

/// Rows whose vector is still NULL.
pub async fn missing_count(pool: &PgPool, target: VectorTarget) -> Result<i64, SearchError> {
    sql::query_scalar(target.count_sql())
        .fetch_one(autocommit(pool))
        .await
        .map_err(SearchError::sql(
            "counting rows without a vector",
            target.table(),
            RERUN_VECTORIZE,
        ))
}

/// Up to `limit` ids after `after` whose vector is NULL, in id order (keyset over the
/// partial index).
pub async fn next_missing_ids(
    pool: &PgPool,
    target: VectorTarget,
    after: i64,
    limit: i64,
) -> Result<Vec<i64>, SearchError> {
    sql::query_scalar(target.next_ids_sql())
        .bind(after)
        .bind(limit)
        .fetch_all(autocommit(pool))
        .await
        .map_err(SearchError::sql(
            "listing rows without a vector",
            target.table(),
            RERUN_VECTORIZE,
        ))
}

/// Builds the vectors of these rows (those still NULL) in one transaction of its own;
/// returns how many rows it wrote.
///
/// The transaction's own settings: synchronous_commit off (a crash can lose the last few
/// committed batches, which merely leaves their vectors NULL for the next run) and no
/// statement timeout (an application role may carry one).
///
/// `flush_stats` asks the server to publish this connection's table statistics right
/// away (PostgreSQL 15+): otherwise the dead rows these updates leave can be reported
/// seconds later, after the VACUUM that removed them, and `health` would see phantom
/// dead tuples.
pub async fn vectorize_ids(
    conn: &mut PgConnection,
    target: VectorTarget,
    ids: &[i64],
    flush_stats: bool,
) -> Result<u64, SearchError> {
    let err = |step| SearchError::sql(step, target.table(), RERUN_VECTORIZE);
    let mut tx = conn.begin().await.map_err(err("building vectors"))?;
    sql::query(
        "SELECT set_config('synchronous_commit', 'off', true), set_config('statement_timeout', '0', true)",
    )
    .execute(&mut *tx)
    .await
    .map_err(err("building vectors"))?;
    let done = sql::query(target.update_sql())
        .bind(ids)
        .execute(&mut *tx)
        .await
        .map_err(err("building vectors"))?;
    if flush_stats {
        // Flagged in this transaction, on its server connection: the flush happens when
        // the transaction ends.
        sql::query("SELECT pg_stat_force_next_flush()")
            .execute(&mut *tx)
            .await
            .map_err(err("publishing table statistics"))?;
    }
    tx.commit().await.map_err(err("building vectors"))?;
    Ok(done.rows_affected())
}

/// The server's version number (e.g. 150004).
pub async fn server_version(pool: &PgPool) -> Result<i32, SearchError> {
    let v: String = sql::query_scalar("SELECT current_setting('server_version_num')")
        .fetch_one(autocommit(pool))
        .await
        .map_err(SearchError::sql(
            "reading the server version",
            "server",
            RERUN_MAINTAIN,
        ))?;
    Ok(v.trim().parse().unwrap_or(0))
}

/// Pages held, estimated or exact when few: `SELECT count(*)` of a 100M-row table takes
/// minutes, and the bulk decision only needs to know "fewer than `limit`".
pub async fn pages_up_to(pool: &PgPool, limit: i64) -> Result<i64, SearchError> {
    sql::query_scalar("SELECT count(*) FROM (SELECT 1 FROM meeting_pages LIMIT $1) AS head")
        .bind(limit)
        .fetch_one(autocommit(pool))
        .await
        .map_err(SearchError::sql(
            "counting pages",
            "meeting_pages",
            "Check that the database is reachable and migrated (`civicload migrate`).",
        ))
}

/// A GIN index civicload builds after the data is in.
#[derive(Clone, Copy, Debug)]
pub struct SearchIndex {
    /// Index name (a contract: `health` and the acceptance checks look for it).
    pub name: &'static str,
    /// Table and column it indexes.
    pub table: &'static str,
    pub column: &'static str,
    pub(crate) create: &'static str,
    pub(crate) create_concurrently: &'static str,
    pub(crate) drop: &'static str,
    pub(crate) drop_concurrently: &'static str,
    pub(crate) fastupdate_on: &'static str,
    pub(crate) fastupdate_off: &'static str,
}

/// A [`SearchIndex`] whose statements are written out from its name, table and column.
macro_rules! search_index {
    ($name:literal, $table:literal, $column:literal) => {
        SearchIndex {
            name: $name,
            table: $table,
            column: $column,
            create: search_index!(@create "", $name, $table, $column),
            create_concurrently: search_index!(@create "CONCURRENTLY ", $name, $table, $column),
            drop: concat!("DROP INDEX IF EXISTS ", $name),
            drop_concurrently: concat!("DROP INDEX CONCURRENTLY IF EXISTS ", $name),
            fastupdate_on: concat!("ALTER INDEX ", $name, " SET (fastupdate = on)"),
            fastupdate_off: concat!("ALTER INDEX ", $name, " SET (fastupdate = off)"),
        }
    };
    (@create $how:literal, $name:literal, $table:literal, $column:literal) => {
        concat!(
            "CREATE INDEX ", $how, "IF NOT EXISTS ", $name, " ON ", $table,
            " USING gin (", $column, ") WITH (fastupdate = off)"
        )
    };
}

/// The search indexes. `fastupdate = off`: no pending list, so a search never pays for
/// merging one and results never lag behind writes (seed 000); each write updates the
/// index itself, which is why the bulk load builds them only at its end.
pub const SEARCH_INDEXES: [SearchIndex; 3] = [
    search_index!(
        "meeting_pages_search_vector_gin",
        "meeting_pages",
        "search_vector"
    ),
    // The pages' phrase keys (migration 0014): which pages hold a phrase's adjacent pairs.
    search_index!(
        "meeting_pages_phrase_keys_gin",
        "meeting_pages",
        "phrase_keys"
    ),
    search_index!(
        "meeting_documents_name_vector_gin",
        "meeting_documents",
        "meeting_name_search_vector"
    ),
];

/// The pages' phrase keys' index (migration 0014).
pub const PHRASE_KEYS_INDEX: &SearchIndex = &SEARCH_INDEXES[1];

/// What the catalog says about an index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexState {
    pub valid: bool,
    /// Storage options, e.g. `fastupdate=off`; for a partitioned index, those of its
    /// partitions' indexes too (a partitioned index's own are fixed at creation).
    pub options: Vec<String>,
    pub method: String,
    /// With its partitions' indexes.
    pub bytes: i64,
    /// An index on the partitioned `meeting_pages` (migration 0010).
    pub partitioned: bool,
}

impl IndexState {
    /// Whether the index was built (or altered) WITH (fastupdate = off), every partition's
    /// index included.
    pub fn fastupdate_off(&self) -> bool {
        self.options
            .iter()
            .any(|o| o == "fastupdate=off" || o == "fastupdate=false")
            && !self
                .options
                .iter()
                .any(|o| o == "fastupdate=on" || o == "fastupdate=true")
    }
}

/// An index's catalog row: valid, options, access method, size, partitioned.
type IndexRow = (bool, Option<Vec<String>>, String, i64, bool);

/// The catalog state of an index, None when it does not exist.
pub async fn index_state(pool: &PgPool, name: &str) -> Result<Option<IndexState>, SearchError> {
    let row: Option<IndexRow> = sql::query_as(
        "SELECT i.indisvalid,
                array(SELECT unnest(c.reloptions) UNION
                      SELECT unnest(k.reloptions) FROM pg_inherits h JOIN pg_class k ON k.oid = h.inhrelid
                      WHERE h.inhparent = c.oid),
                am.amname::text,
                pg_relation_size(c.oid) + coalesce((SELECT sum(pg_relation_size(h.inhrelid))::bigint
                                                    FROM pg_inherits h WHERE h.inhparent = c.oid), 0),
                c.relkind = 'I'
         FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid JOIN pg_am am ON am.oid = c.relam
         WHERE c.oid = to_regclass($1)",
    )
    .bind(name)
    .fetch_optional(autocommit(pool))
    .await
    .map_err(SearchError::sql(
        "reading the index catalog",
        "pg_index",
        RERUN_MAINTAIN,
    ))?;
    Ok(
        row.map(|(valid, options, method, bytes, partitioned)| IndexState {
            valid,
            options: options.unwrap_or_default(),
            method,
            bytes,
            partitioned,
        }),
    )
}

/// How to build an index that is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildMode {
    /// Plain CREATE INDEX: one scan, fastest, but writes to the table wait for it. Used at
    /// the end of a bulk load, when nothing else should be writing.
    Blocking,
    /// CREATE INDEX CONCURRENTLY: two scans, writes go on. Used on a database in service.
    Concurrently,
}

/// What `ensure_search_index` did.
#[derive(Clone, Debug)]
pub struct IndexBuild {
    pub name: &'static str,
    /// False when a valid index was already there.
    pub built: bool,
    /// An invalid leftover (an interrupted concurrent build) was dropped first.
    pub replaced_invalid: bool,
    /// The index had fastupdate on (a vectorize that was killed) and was set back to off,
    /// its pending list merged.
    pub restored_fastupdate_off: bool,
    pub took: Duration,
    pub bytes: i64,
}

/// A dedicated session for maintenance, with memory for index builds and VACUUM and no
/// statement timeout (a server or role may set one for the application; building a GIN
/// index over 100M pages takes far longer), given as startup options, so its settings
/// never leak into connections the load goes on using.
///
/// A transaction-pooling PgBouncer cannot hold session settings and refuses them: the
/// session then runs on the server's defaults, except where a step can run in a
/// transaction and sets its own (the plain CREATE INDEX after an initial load).
pub async fn maintenance_session(
    options: &PgConnectOptions,
    maintenance_work_mem: &str,
) -> Result<PgConnection, SearchError> {
    let bad_size = SearchError::sql(
        "setting maintenance_work_mem",
        "session",
        "Pass a valid size such as 1GB or 512MB.",
    );
    // A startup option is one word: a size is digits and a unit.
    if maintenance_work_mem.is_empty()
        || !maintenance_work_mem
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.')
    {
        return Err(bad_size(sqlx::Error::Configuration(
            format!("{maintenance_work_mem:?} is not a size").into(),
        )));
    }
    let mut settings = vec![
        ("maintenance_work_mem", maintenance_work_mem),
        ("statement_timeout", "0"),
    ];
    // client_connection_check_interval (PostgreSQL 14+): if civicload is killed during an
    // hour-long index build, the server notices within 10 s and stops it, instead of
    // finishing work nobody waits for.
    let probe = options.clone().connect().await.map_err(SearchError::sql(
        "connecting",
        "server",
        RERUN_MAINTAIN,
    ))?;
    if probe.server_version_num().unwrap_or(0) >= 140000 {
        settings.push(("client_connection_check_interval", "10s"));
    }
    let _ = probe.close().await;
    super::connect_with_settings(options, &settings)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("22023") => bad_size(e),
            _ => SearchError::sql("opening a maintenance session", "server", RERUN_MAINTAIN)(e),
        })
}

/// Drops the search indexes, so a bulk load into an (almost) empty table does not update
/// them row by row; they are rebuilt at the end of the load.
pub async fn drop_search_indexes(pool: &PgPool) -> Result<(), SearchError> {
    for index in &SEARCH_INDEXES {
        sqlx::raw_sql(index.drop)
            .execute(autocommit(pool))
            .await
            .map_err(SearchError::sql(
                "dropping the index before a bulk load",
                index.name,
                "Rerun the backfill; `civicload maintain` rebuilds the index if it is missing.",
            ))?;
    }
    Ok(())
}

/// The application's search: the top 100 pages by rank for a web-style query, with the
/// meeting they belong to and a highlighted headline.
///
/// The query text goes through `unaccent` like the vectors did, so `café` finds `cafe`;
/// so does the headline's text, or an accented word would match but not be highlighted
/// (and an AND query whose terms cannot all be found in the raw text gets no fragment).
/// Ranking happens in a subquery limited to 100 rows, so `ts_headline` (which re-parses the
/// page text) runs for those 100 only, not for every match.
///
/// The tsquery is written inline, not as a `FROM websearch_to_tsquery(...) q` item: a
/// function scan joined by nested loop cannot be split across parallel workers, the inline
/// (stable) expression can. Measured on 200k pages, "budget" (107k matches, ranking
/// dominates): 2.4 s serial with the FROM form, 0.9 s with 4 workers inline.
pub const SEARCH_SQL: &str = "
SELECT top.id, top.rank, m.subdomain, d.document_type, d.meeting_name, d.meeting_date,
       p.page_number,
       ts_headline('simple', public.unaccent(p.text), websearch_to_tsquery('simple', public.unaccent($1)),
                   'StartSel=<mark>, StopSel=</mark>, MaxFragments=2, MinWords=8, MaxWords=24') AS headline
FROM (
    SELECT p.id, ts_rank(p.search_vector, websearch_to_tsquery('simple', public.unaccent($1))) AS rank
    FROM meeting_pages p
    WHERE p.search_vector @@ websearch_to_tsquery('simple', public.unaccent($1))
    ORDER BY rank DESC, p.id
    LIMIT 100
) AS top
JOIN meeting_pages p ON p.id = top.id
JOIN meeting_documents d ON d.id = p.document_id
JOIN municipalities m ON m.id = d.municipality_id
ORDER BY top.rank DESC, top.id";

/// One search result.
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize)]
pub struct SearchHit {
    pub id: i64,
    pub rank: f32,
    pub subdomain: String,
    pub document_type: String,
    pub meeting_name: String,
    pub meeting_date: chrono::NaiveDate,
    pub page_number: i32,
    pub headline: String,
}

/// Session settings for a search (seed 000's "parallel search mode"), applied with
/// SET LOCAL so they end with the transaction (safe behind PgBouncer).
#[derive(Clone, Copy, Debug)]
pub struct SearchSettings {
    /// max_parallel_workers_per_gather for this query (the server's max_parallel_workers
    /// still caps what is launched).
    pub workers: u32,
    /// Turns off sequential scans: on a tiny table the planner rightly prefers one, which
    /// hides whether the index would be used at scale.
    pub no_seqscan: bool,
}

async fn apply_search_settings(
    conn: &mut PgConnection,
    settings: SearchSettings,
) -> Result<(), sqlx::Error> {
    sql::query(
        "SELECT set_config('max_parallel_workers_per_gather', $1, true),
                set_config('parallel_setup_cost', '50', true),
                set_config('enable_seqscan', $2, true)",
    )
    .bind(settings.workers.to_string())
    .bind(if settings.no_seqscan { "off" } else { "on" })
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Runs the search under EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON); returns the plan
/// document PostgreSQL produced.
pub async fn explain_search(
    pool: &PgPool,
    query: &str,
    settings: SearchSettings,
) -> Result<serde_json::Value, SearchError> {
    let advice = "Check the query text; `civicload health` shows whether the search index exists.";
    let err = |step| SearchError::sql(step, "meeting_pages", advice);
    let mut tx = pool.begin().await.map_err(err("starting the search"))?;
    apply_search_settings(&mut tx, settings)
        .await
        .map_err(err("applying the search settings"))?;
    let plan: sqlx::types::Json<serde_json::Value> = sql::query_scalar(&format!(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {SEARCH_SQL}"
    ))
    .bind(query)
    .fetch_one(&mut *tx)
    .await
    .map_err(err("explaining the search"))?;
    tx.rollback().await.map_err(err("ending the search"))?;
    Ok(plan.0)
}

/// Runs the search and returns its results.
pub async fn search(
    pool: &PgPool,
    query: &str,
    settings: SearchSettings,
) -> Result<Vec<SearchHit>, SearchError> {
    let advice = "Check the query text; `civicload health` shows whether the search index exists.";
    let err = |step| SearchError::sql(step, "meeting_pages", advice);
    let mut tx = pool.begin().await.map_err(err("starting the search"))?;
    apply_search_settings(&mut tx, settings)
        .await
        .map_err(err("applying the search settings"))?;
    let hits = sql::query_as(SEARCH_SQL)
        .bind(query)
        .fetch_all(&mut *tx)
        .await
        .map_err(err("searching"))?;
    tx.rollback().await.map_err(err("ending the search"))?;
    Ok(hits)
}
