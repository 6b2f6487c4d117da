//! `civicload search-bench --query Q`: times the application's search (`civicload_search`,
//! migration 0009) as the application calls it, `--runs` times, and reports p50 / p95 /
//! max latency, the rows of the last run, the capped match count and the plan the
//! function chose (all matches then a sort, or the newest-first walk). With
//! `--target civic-observer` it times the application's own G1 query over its tables
//! (read-only) and prints the same report; G2's search is a BM25 index its operators
//! build, which civicload does not time (exit 2).

use std::time::Instant;

use serde::Serialize;
use sqlx::PgPool;
use stages::store::search_fn::{
    self, SearchFilters, SearchOrder, SearchRequest, SearchResult, SearchRoute,
};

use stages::target::Generation;

use crate::cli::{OrderArg, SearchBenchArgs};
use crate::exit::UsageError;

impl SearchBenchArgs {
    fn request(&self) -> SearchRequest {
        SearchRequest {
            query: self.query.clone(),
            order: match self.order {
                OrderArg::Date => SearchOrder::Date,
                OrderArg::Rank => SearchOrder::Rank,
            },
            filters: SearchFilters {
                municipality: self.municipality.clone(),
                state: self.state.clone(),
                from: self.from,
                to: self.to,
                document_type: self.document_type.map(Into::into),
            },
            page_size: self.page_size,
            page_offset: 0,
        }
    }
}

/// What the benchmark measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub query: String,
    pub order: SearchOrder,
    pub filters: serde_json::Value,
    pub runs: u32,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
    pub min_ms: f64,
    /// Rows of the last run.
    pub rows: usize,
    /// Matching pages, counted up to `count_cap` (not timed).
    pub matches: i64,
    pub count_cap: i64,
    pub route: SearchRoute,
    /// The last run's rows.
    pub results: Vec<SearchResult>,
}

/// The nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Whose search is timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// civicload's own schema: `civicload_search`.
    Civicload,
    /// civic-observer G1: the application's query over its tables.
    ObserverG1,
}

/// `civicload search-bench` against civicload's own schema.
pub async fn run(pool: &PgPool, args: &SearchBenchArgs) -> anyhow::Result<BenchReport> {
    run_on(pool, args, Backend::Civicload).await
}

/// `civicload search-bench --target civic-observer`: G1's search timed like civicload's;
/// G2 is a usage error (exit 2) saying why.
pub async fn run_observer(
    pool: &PgPool,
    generation: Generation,
    args: &SearchBenchArgs,
) -> anyhow::Result<BenchReport> {
    match generation {
        Generation::G1 => run_on(pool, args, Backend::ObserverG1).await,
        Generation::G2 => Err(UsageError(
            "search-bench --target civic-observer: this database is civic-observer G2, whose search is a BM25 index (ParadeDB pg_search) that the application's operators build by hand outside its migrations; civicload neither builds nor times it. Time G1's search (a database with the search_vector columns) or civicload's own schema (without --target)".into(),
        )
        .into()),
    }
}

async fn run_on(
    pool: &PgPool,
    args: &SearchBenchArgs,
    backend: Backend,
) -> anyhow::Result<BenchReport> {
    let req = args.request();
    let mut times = Vec::with_capacity(args.runs as usize);
    let mut results = Vec::new();
    for _ in 0..args.runs {
        let t = Instant::now();
        results = match backend {
            Backend::Civicload => search_fn::search(pool, &req).await?,
            Backend::ObserverG1 => search_fn::observer_search(pool, &req).await?,
        };
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let (matches, route) = match backend {
        Backend::Civicload => (
            search_fn::count(pool, &req, args.count_cap).await?,
            search_fn::route(pool, &req).await?,
        ),
        Backend::ObserverG1 => (
            search_fn::observer_count(pool, &req, args.count_cap).await?,
            SearchRoute::ApplicationQuery,
        ),
    };
    Ok(BenchReport {
        query: args.query.clone(),
        order: req.order,
        filters: serde_json::json!({
            "municipality": args.municipality,
            "state": args.state,
            "from": args.from,
            "to": args.to,
            "document_type": req.filters.document_type.map(|d| d.as_str()),
        }),
        runs: args.runs,
        p50_ms: percentile(&times, 50.0),
        p95_ms: percentile(&times, 95.0),
        max_ms: times.last().copied().unwrap_or(0.0),
        min_ms: times.first().copied().unwrap_or(0.0),
        rows: results.len(),
        matches,
        count_cap: args.count_cap,
        route,
        results,
    })
}

/// The report for a terminal.
pub fn render(r: &BenchReport, show: usize) -> String {
    let route = match r.route {
        SearchRoute::AllMatches => "every match from the GIN index, then a top-N sort",
        SearchRoute::NewestFirstWalk => "newest-first walk of the date index",
        SearchRoute::NewestInDateWindows => "the newest matches from date windows of the GIN index",
        SearchRoute::ApplicationQuery => "civic-observer's own G1 query, as the planner plans it",
    };
    let matches = match r.matches >= r.count_cap {
        true => format!("{}+", r.count_cap),
        false => r.matches.to_string(),
    };
    let mut s = format!(
        "Search: {:?}, by {}, filters {}\nPlan: {route}\nMatches: {matches}; rows: {}\n\
         Time over {} runs: p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms (min {:.1} ms)\n",
        r.query,
        match r.order {
            SearchOrder::Date => "meeting date, newest first",
            SearchOrder::Rank => "rank",
        },
        r.filters,
        r.rows,
        r.runs,
        r.p50_ms,
        r.p95_ms,
        r.max_ms,
        r.min_ms
    );
    if show > 0 && !r.results.is_empty() {
        s.push_str("\nTop results:\n");
        for h in r.results.iter().take(show) {
            s.push_str(&format!(
                "  {} {:.4}  {} {} {} p.{} ({})\n",
                h.meeting_date,
                h.rank,
                h.subdomain,
                h.document_type,
                h.meeting_name,
                h.page_number,
                h.source_id
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let t: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&t, 50.0), 10.0);
        assert_eq!(percentile(&t, 95.0), 19.0);
        assert_eq!(percentile(&t, 100.0), 20.0);
        assert_eq!(percentile(&[7.0], 95.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
