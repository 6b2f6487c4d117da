//! The application's search as civicload ships it: `civicload_search` and its companions
//! (migration 0009), called with bound parameters. Whole corpus, optional filters
//! (municipality, state, meeting dates, document type), newest first or by rank, one page
//! of results, and a capped count of the matches. `civicload search-bench` times it.

use chrono::NaiveDate;
use sqlx::PgPool;

use super::search::SearchError;
use super::sql::{self, autocommit};
use crate::batch::DocumentType;

const ADVICE: &str = "Check the query and filters; `civicload migrate` installs the search \
                      function and `civicload health` shows whether the search index exists.";

/// The order of the results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchOrder {
    /// Meeting date, newest first (ties: newest page id first). Always exact.
    #[default]
    Date,
    /// ts_rank, highest first (ties: newest first).
    Rank,
}

impl SearchOrder {
    /// The `order_by` argument of `civicload_search`.
    pub fn as_str(self) -> &'static str {
        match self {
            SearchOrder::Date => "date",
            SearchOrder::Rank => "rank",
        }
    }
}

/// The filters a search may carry; None means "any".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SearchFilters {
    /// A municipality's subdomain.
    pub municipality: Option<String>,
    /// A state code (case-insensitive), e.g. `CA`.
    pub state: Option<String>,
    /// Meetings on or after this date.
    pub from: Option<NaiveDate>,
    /// Meetings on or before this date.
    pub to: Option<NaiveDate>,
    pub document_type: Option<DocumentType>,
}

/// One search: web-search syntax (`budget "city council" -parking or bicycle`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchRequest {
    pub query: String,
    pub order: SearchOrder,
    pub filters: SearchFilters,
    /// Results per page (the application shows 100).
    pub page_size: i32,
    /// Results skipped before the page.
    pub page_offset: i32,
}

impl SearchRequest {
    /// The first page of 100, newest first, no filters.
    pub fn new(query: impl Into<String>) -> Self {
        SearchRequest {
            query: query.into(),
            order: SearchOrder::Date,
            filters: SearchFilters::default(),
            page_size: 100,
            page_offset: 0,
        }
    }

    fn document_type(&self) -> Option<&'static str> {
        self.filters.document_type.map(DocumentType::as_str)
    }
}

/// One result row.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow, serde::Serialize)]
pub struct SearchResult {
    /// civicload's page id; None in civic-observer's tables, whose page id is `source_id`.
    pub id: Option<i64>,
    pub source_id: String,
    pub subdomain: String,
    pub document_type: String,
    pub meeting_name: String,
    pub meeting_date: NaiveDate,
    pub page_number: i32,
    pub rank: f32,
}

/// Which plan `civicload_search` takes for a request (the same decision it makes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchRoute {
    /// Fewer matches than the threshold: every match from the GIN bitmap, then a sort.
    AllMatches,
    /// At least the threshold: the newest-first btree walk, stopping at enough matches.
    NewestFirstWalk,
    /// At least the threshold, sparse among the newest pages: the newest matches from
    /// date windows (migration 0016), a bitmap per window.
    NewestInDateWindows,
    /// civic-observer G1: the application's own query, as the planner plans it.
    ApplicationQuery,
}

/// Runs the search: one page of results.
pub async fn search(pool: &PgPool, req: &SearchRequest) -> Result<Vec<SearchResult>, SearchError> {
    sql::query_as(
        "SELECT id, source_id, subdomain, document_type, meeting_name, meeting_date, page_number, rank
         FROM civicload_search($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&req.query)
    .bind(req.order.as_str())
    .bind(&req.filters.municipality)
    .bind(&req.filters.state)
    .bind(req.filters.from)
    .bind(req.filters.to)
    .bind(req.document_type())
    .bind(req.page_size)
    .bind(req.page_offset)
    .fetch_all(autocommit(pool))
    .await
    .map_err(SearchError::sql("searching", "civicload_search", ADVICE))
}

/// The pages matching the request's query and filters, counted up to `cap`.
pub async fn count(pool: &PgPool, req: &SearchRequest, cap: i64) -> Result<i64, SearchError> {
    let cap = i32::try_from(cap).unwrap_or(i32::MAX);
    sql::query_scalar("SELECT civicload_search_count($1, $2, $3, $4, $5, $6, $7)")
        .bind(&req.query)
        .bind(&req.filters.municipality)
        .bind(&req.filters.state)
        .bind(req.filters.from)
        .bind(req.filters.to)
        .bind(req.document_type())
        .bind(cap)
        .fetch_one(autocommit(pool))
        .await
        .map_err(SearchError::sql(
            "counting matches",
            "civicload_search_count",
            ADVICE,
        ))
}

/// The plan `civicload_search` chooses for this request (`civicload_search_route`, the
/// same steps: the newest-first probe, then the capped count of actual matches).
pub async fn route(pool: &PgPool, req: &SearchRequest) -> Result<SearchRoute, SearchError> {
    let route: String =
        sql::query_scalar("SELECT civicload_search_route($1, $2, $3, $4, $5, $6, $7, $8, $9)")
            .bind(&req.query)
            .bind(req.order.as_str())
            .bind(&req.filters.municipality)
            .bind(&req.filters.state)
            .bind(req.filters.from)
            .bind(req.filters.to)
            .bind(req.document_type())
            .bind(req.page_size)
            .bind(req.page_offset)
            .fetch_one(autocommit(pool))
            .await
            .map_err(SearchError::sql(
                "choosing the search route",
                "civicload_search_route",
                ADVICE,
            ))?;
    Ok(match route.as_str() {
        "newest_first_walk" => SearchRoute::NewestFirstWalk,
        "newest_in_date_windows" => SearchRoute::NewestInDateWindows,
        _ => SearchRoute::AllMatches,
    })
}

/// Copies each page's meeting date from its document where it is still NULL (pages a bulk
/// COPY wrote without it, such as the seeds' recipe; civicload's own load writes it), so
/// newest-first search sees every page. Set-based, through the partial index of the pages
/// concerned; returns how many it filled.
pub async fn fill_missing_meeting_dates(pool: &PgPool) -> Result<u64, SearchError> {
    let done = sql::query(
        "UPDATE meeting_pages p SET meeting_date = d.meeting_date
         FROM meeting_documents d
         WHERE p.meeting_date IS NULL AND d.id = p.document_id",
    )
    .execute(autocommit(pool))
    .await
    .map_err(SearchError::sql(
        "filling the pages' meeting dates",
        "meeting_pages",
        "Rerun `civicload maintain`: it fills the dates that are still missing.",
    ))?;
    Ok(done.rows_affected())
}

/// Computes the phrase keys (migrations 0014, 0015) of pages that have a vector but no
/// keys: rows a bulk load left to the server, or a database migrated with pages in it.
/// civicload reads each vector (`tsvectorsend`) and computes the keys as the load does; a
/// vector it cannot read is left to the server's `civicload_phrase_keys`. In batches of
/// 5,000 pages through the partial index of the pages concerned, each its own statement,
/// so an interrupted run keeps what it did; a page rewritten meanwhile (another `xmin`) is
/// left for the next batch, which reads it again. Returns how many pages it filled.
///
/// The UPDATE, not the keys, is the cost: each page's new row version enters every index
/// of the table, the GIN indexes included (~2 ms a page at 1M pages). So when
/// [`MASS_FILL`] pages or more lack keys (or a tenth of the pages), the keys' own index is
/// dropped first (the search does not use it while any page lacks keys, and `maintain`,
/// or the load that called this, builds it again right after, on every core), and the
/// page index collects the new row versions in its pending list meanwhile, merged in bulk
/// at the end, as `vectorize` does (killed in between, `maintain` switches it back).
pub async fn fill_missing_phrase_keys(pool: &PgPool) -> Result<u64, SearchError> {
    let mass: bool = sql::query_scalar(
        "SELECT count(*) >= $1 OR count(*) * 10 >= (SELECT greatest(reltuples, 0)
                FROM pg_class WHERE oid = to_regclass('meeting_pages'))
         FROM (SELECT 1 FROM meeting_pages
               WHERE phrase_keys IS NULL AND search_vector IS NOT NULL LIMIT $1) AS m",
    )
    .bind(MASS_FILL)
    .fetch_one(autocommit(pool))
    .await
    .map_err(keys_failed("counting the pages without phrase keys"))?;
    if !mass {
        return fill_keys_in_batches(pool).await;
    }
    sql::query(super::search::PHRASE_KEYS_INDEX.drop)
        .execute(autocommit(pool))
        .await
        .map_err(keys_failed(
            "dropping the phrase keys' index before filling the keys",
        ))?;
    let pages_index = super::search::VectorTarget::Pages.index();
    let relaxed = super::search_index::relax_fastupdate(pool, pages_index).await?;
    let filled = fill_keys_in_batches(pool).await;
    if relaxed {
        super::search_index::restore_fastupdate_off(pool, pages_index).await?;
    }
    filled
}

/// A failed step of [`fill_missing_phrase_keys`].
fn keys_failed(step: &'static str) -> impl FnOnce(sqlx::Error) -> SearchError {
    SearchError::sql(
        step,
        "meeting_pages",
        "Rerun `civicload maintain`: it computes the keys that are still missing.",
    )
}

async fn fill_keys_in_batches(pool: &PgPool) -> Result<u64, SearchError> {
    const WRITING: &str = "writing the pages' phrase keys";
    let mut filled = 0;
    loop {
        let rows: Vec<(i64, i64, String, Vec<u8>)> = sql::query_as(
            "SELECT id, municipality_id, xmin::text, tsvectorsend(search_vector)
             FROM meeting_pages WHERE phrase_keys IS NULL AND search_vector IS NOT NULL
             LIMIT 5000",
        )
        .fetch_all(autocommit(pool))
        .await
        .map_err(keys_failed(
            "reading the vectors of pages without phrase keys",
        ))?;
        if rows.is_empty() {
            return Ok(filled);
        }
        let mut batch = KeyBatch::default();
        for (id, municipality, xmin, vector) in rows {
            batch.push(id, municipality, xmin, &vector);
        }
        // Joined row by row through each partition's primary key: a hash join instead
        // (the planner's choice once, at 1M pages) read the whole table for 5,000 rows.
        let mut tx = pool.begin().await.map_err(keys_failed(WRITING))?;
        sql::query(
            "SELECT set_config('enable_hashjoin', 'off', true),
                    set_config('enable_mergejoin', 'off', true),
                    set_config('enable_seqscan', 'off', true)",
        )
        .execute(&mut *tx)
        .await
        .map_err(keys_failed(WRITING))?;
        let done = sql::query(
            "UPDATE meeting_pages p
             SET phrase_keys = CASE WHEN k.first > 0 THEN ($5::int4[])[k.first:k.last]
                                    ELSE civicload_phrase_keys(p.search_vector) END
             FROM unnest($1::int8[], $2::int8[], $3::text[], $4::int4[], $6::int4[])
                  AS k(id, municipality_id, xmin, first, last)
             WHERE p.id = k.id AND p.municipality_id = k.municipality_id
               AND p.xmin::text = k.xmin AND p.phrase_keys IS NULL",
        )
        .bind(&batch.ids)
        .bind(&batch.municipalities)
        .bind(&batch.xmins)
        .bind(&batch.first)
        .bind(&batch.keys)
        .bind(&batch.last)
        .execute(&mut *tx)
        .await
        .map_err(keys_failed(WRITING))?;
        tx.commit().await.map_err(keys_failed(WRITING))?;
        if done.rows_affected() == 0 {
            // Every page of the batch was rewritten since it was read: read them again.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        filled += done.rows_affected();
    }
}

/// Pages without keys from which [`fill_missing_phrase_keys`] drops the keys' index first
/// (and from a tenth of the pages, on a smaller table).
pub const MASS_FILL: i64 = 20_000;

/// One batch of pages' keys as arrays for `unnest`: every page's keys back to back in
/// `keys`, page i's at `keys[first[i]..=last[i]]` (1-based, as SQL slices; an empty range
/// for no keys), `first` 0 where the vector could not be read.
#[derive(Default)]
struct KeyBatch {
    ids: Vec<i64>,
    municipalities: Vec<i64>,
    xmins: Vec<String>,
    first: Vec<i32>,
    last: Vec<i32>,
    keys: Vec<i32>,
}

impl KeyBatch {
    fn push(&mut self, id: i64, municipality: i64, xmin: String, vector: &[u8]) {
        self.ids.push(id);
        self.municipalities.push(municipality);
        self.xmins.push(xmin);
        match crate::tsvector::Tsv::decode_binary(vector) {
            Some(v) => {
                self.first.push(self.keys.len() as i32 + 1);
                v.append_phrase_keys(&mut self.keys);
                self.last.push(self.keys.len() as i32);
            }
            None => {
                self.first.push(0);
                self.last.push(0);
            }
        }
    }
}

// civic-observer G1 (CIVIC_OBSERVER.md, "How the application searches"): the application's
// own query over its own tables, read-only (nothing is installed in its schema), so
// `search-bench --target civic-observer` times what the application's users wait for:
// `search_vector @@ websearch_to_tsquery('simple', q)` joined to documents and
// municipalities, newest first (ties: page id, descending) or by ts_rank. Only the filters
// given are written, so each shape is planned for itself; every parameter is bound
// ($1 query, $2 subdomain, $3 state, $4 from, $5 to, $6 document type, $7 limit or cap,
// $8 offset).

const OBSERVER_FROM: &str = "FROM meetings_meetingpage p
     JOIN meetings_meetingdocument d ON d.id = p.document_id
     JOIN municipalities_muni m ON m.id = d.municipality_id";
const OBSERVER_ADVICE: &str = "Check the query and filters, and that --database-url names \
                               civic-observer's database (G1, with its search_vector columns).";

/// Binds $1-$6 (see above); a filter not given is bound as NULL and not referenced.
macro_rules! observer_bind {
    ($q:expr, $req:expr) => {
        $q.bind(&$req.query)
            .bind(&$req.filters.municipality)
            .bind(&$req.filters.state)
            .bind($req.filters.from)
            .bind($req.filters.to)
            .bind($req.document_type())
    };
}

fn observer_where(f: &SearchFilters) -> String {
    let mut w = String::from("p.search_vector @@ websearch_to_tsquery('simple', $1)");
    let clauses = [
        (f.municipality.is_some(), " AND m.subdomain = $2"),
        (f.state.is_some(), " AND upper(m.state) = upper($3)"),
        (f.from.is_some(), " AND d.meeting_date >= $4"),
        (f.to.is_some(), " AND d.meeting_date <= $5"),
        (f.document_type.is_some(), " AND d.document_type = $6"),
    ];
    for (given, clause) in clauses {
        if given {
            w.push_str(clause);
        }
    }
    w
}

/// The application's search over civic-observer G1's tables: one page of results.
pub async fn observer_search(
    pool: &PgPool,
    req: &SearchRequest,
) -> Result<Vec<SearchResult>, SearchError> {
    let order = match req.order {
        SearchOrder::Date => "d.meeting_date DESC, p.id DESC",
        SearchOrder::Rank => "rank DESC, d.meeting_date DESC, p.id DESC",
    };
    let statement = format!(
        "SELECT NULL::bigint AS id, p.id::text AS source_id, m.subdomain::text AS subdomain,
                d.document_type::text AS document_type, d.meeting_name::text AS meeting_name,
                d.meeting_date, p.page_number,
                ts_rank(p.search_vector, websearch_to_tsquery('simple', $1)) AS rank
         {OBSERVER_FROM} WHERE {} ORDER BY {order} LIMIT $7 OFFSET $8",
        observer_where(&req.filters)
    );
    observer_bind!(sql::query_as(&statement), req)
        .bind(i64::from(req.page_size))
        .bind(i64::from(req.page_offset.max(0)))
        .fetch_all(autocommit(pool))
        .await
        .map_err(SearchError::sql(
            "searching",
            "meetings_meetingpage",
            OBSERVER_ADVICE,
        ))
}

/// The pages of civic-observer G1 matching the request, counted up to `cap`.
pub async fn observer_count(
    pool: &PgPool,
    req: &SearchRequest,
    cap: i64,
) -> Result<i64, SearchError> {
    let statement = format!(
        "SELECT count(*) FROM (SELECT 1 {OBSERVER_FROM} WHERE {} LIMIT $7) AS capped",
        observer_where(&req.filters)
    );
    observer_bind!(sql::query_scalar(&statement), req)
        .bind(cap)
        .fetch_one(autocommit(pool))
        .await
        .map_err(SearchError::sql(
            "counting matches",
            "meetings_meetingpage",
            OBSERVER_ADVICE,
        ))
}
