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

/// Computes the phrase keys (migration 0014) of pages that have a vector but no keys: rows
/// a bulk load left to the server, or a database migrated with pages in it. In batches of
/// 20,000 pages through the partial index of the pages concerned, each its own
/// transaction, so an interrupted run keeps what it did; returns how many it filled.
pub async fn fill_missing_phrase_keys(pool: &PgPool) -> Result<u64, SearchError> {
    let mut filled = 0;
    loop {
        let done = sql::query(
            "WITH batch AS (
                 SELECT id, municipality_id FROM meeting_pages
                 WHERE phrase_keys IS NULL AND search_vector IS NOT NULL LIMIT 20000)
             UPDATE meeting_pages p SET phrase_keys = civicload_phrase_keys(p.search_vector)
             FROM batch b WHERE p.id = b.id AND p.municipality_id = b.municipality_id",
        )
        .execute(autocommit(pool))
        .await
        .map_err(SearchError::sql(
            "computing the pages' phrase keys",
            "meeting_pages",
            "Rerun `civicload maintain`: it computes the keys that are still missing.",
        ))?;
        if done.rows_affected() == 0 {
            return Ok(filled);
        }
        filled += done.rows_affected();
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
