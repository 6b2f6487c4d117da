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
    pub id: i64,
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

/// The plan `civicload_search` chooses for this request, from the actual matches.
pub async fn route(pool: &PgPool, req: &SearchRequest) -> Result<SearchRoute, SearchError> {
    let wanted = req.page_offset.max(0) + req.page_size.max(0);
    let threshold: i64 = sql::query_scalar("SELECT civicload_search_threshold($1, $2)")
        .bind(req.order.as_str())
        .bind(wanted)
        .fetch_one(autocommit(pool))
        .await
        .map_err(SearchError::sql(
            "reading the search threshold",
            "civicload_search_threshold",
            ADVICE,
        ))?;
    Ok(match count(pool, req, threshold).await? < threshold {
        true => SearchRoute::AllMatches,
        false => SearchRoute::NewestFirstWalk,
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
