//! `civicload search-bench --query Q`: runs the application's search (top 100 pages by
//! rank, with headlines) under EXPLAIN (ANALYZE, BUFFERS) and reports what matters for
//! seed 000's goals: the plan, whether the GIN index is used, parallel workers planned and
//! launched, buffers and time.

use clap::Args;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use stages::store::search::{self, SearchHit, SearchSettings, SEARCH_INDEXES};

/// `civicload search-bench` flags.
#[derive(Debug, Args, Clone)]
pub struct SearchBenchArgs {
    /// The search, in web-search syntax (`budget "city council" -parking`).
    #[arg(long)]
    pub query: String,
    /// Parallel workers per gather for this query (seed 000's parallel search mode); the
    /// server's max_parallel_workers still caps how many start.
    #[arg(long, default_value_t = 8)]
    pub workers: u32,
    /// Disable sequential scans for this query (on a tiny table the planner rightly prefers
    /// one, which hides whether the index would be used at scale).
    #[arg(long)]
    pub no_seqscan: bool,
    /// Print the top N results with their headlines.
    #[arg(long, default_value_t = 5)]
    pub show: usize,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// What the benchmark found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BenchReport {
    pub query: String,
    /// Indexes the plan reads, in plan order.
    pub indexes_used: Vec<String>,
    pub uses_search_index: bool,
    pub workers_planned: i64,
    pub workers_launched: i64,
    pub planning_ms: f64,
    pub execution_ms: f64,
    pub rows: i64,
    pub shared_hit_blocks: i64,
    pub shared_read_blocks: i64,
    /// The plan as indented lines.
    pub plan: Vec<String>,
    /// The plan document PostgreSQL returned.
    pub explain: Value,
    pub top: Vec<SearchHit>,
}

/// Reads the facts out of an EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) document.
pub fn analyze_plan(explain: &Value) -> BenchReport {
    let mut r = BenchReport {
        explain: explain.clone(),
        ..Default::default()
    };
    let Some(top) = explain.as_array().and_then(|a| a.first()) else {
        return r;
    };
    r.planning_ms = top["Planning Time"].as_f64().unwrap_or(0.0);
    r.execution_ms = top["Execution Time"].as_f64().unwrap_or(0.0);
    let plan = &top["Plan"];
    r.rows = plan["Actual Rows"].as_i64().unwrap_or(0);
    r.shared_hit_blocks = plan["Shared Hit Blocks"].as_i64().unwrap_or(0);
    r.shared_read_blocks = plan["Shared Read Blocks"].as_i64().unwrap_or(0);
    walk(plan, 0, &mut r);
    r.uses_search_index = r.indexes_used.iter().any(|i| i == SEARCH_INDEXES[0].name);
    r
}

fn walk(node: &Value, depth: usize, r: &mut BenchReport) {
    let kind = node["Node Type"].as_str().unwrap_or("?");
    let parallel = if node["Parallel Aware"].as_bool() == Some(true) {
        "Parallel "
    } else {
        ""
    };
    let mut line = format!("{}{parallel}{kind}", "  ".repeat(depth));
    if let Some(rel) = node["Relation Name"].as_str() {
        line.push_str(&format!(" on {rel}"));
    }
    if let Some(index) = node["Index Name"].as_str() {
        line.push_str(&format!(" using {index}"));
        r.indexes_used.push(index.to_string());
    }
    if let Some(p) = node["Workers Planned"].as_i64() {
        r.workers_planned += p;
        line.push_str(&format!(" (workers planned {p}"));
        let l = node["Workers Launched"].as_i64().unwrap_or(0);
        r.workers_launched += l;
        line.push_str(&format!(", launched {l})"));
    }
    if let (Some(t), Some(rows), Some(loops)) = (
        node["Actual Total Time"].as_f64(),
        node["Actual Rows"].as_i64(),
        node["Actual Loops"].as_i64(),
    ) {
        line.push_str(&format!(" [{t:.3} ms, {rows} rows x {loops} loops]"));
    }
    r.plan.push(line);
    if let Some(children) = node["Plans"].as_array() {
        for c in children {
            walk(c, depth + 1, r);
        }
    }
}

/// `civicload search-bench`.
pub async fn run(pool: &PgPool, args: &SearchBenchArgs) -> anyhow::Result<BenchReport> {
    let settings = SearchSettings {
        workers: args.workers,
        no_seqscan: args.no_seqscan,
    };
    let explain = search::explain_search(pool, &args.query, settings).await?;
    let mut report = analyze_plan(&explain);
    report.query = args.query.clone();
    if args.show > 0 {
        let mut hits = search::search(pool, &args.query, settings).await?;
        hits.truncate(args.show);
        report.top = hits;
    }
    Ok(report)
}

/// The report for a terminal.
pub fn render(r: &BenchReport) -> String {
    let mut s = format!(
        "Search: {:?} (top 100 by ts_rank, with ts_headline)\n\nPlan:\n",
        r.query
    );
    for line in &r.plan {
        s.push_str("  ");
        s.push_str(line);
        s.push('\n');
    }
    s.push_str(&format!(
        "\nIndex used: {}\n",
        if r.indexes_used.is_empty() {
            "none (sequential scan)".to_string()
        } else {
            r.indexes_used.join(", ")
        }
    ));
    s.push_str(&format!(
        "Search index ({}): {}\n",
        SEARCH_INDEXES[0].name,
        if r.uses_search_index {
            "used"
        } else {
            "NOT used"
        }
    ));
    s.push_str(&format!(
        "Parallel workers: {} planned, {} launched{}\n",
        r.workers_planned,
        r.workers_launched,
        if r.workers_planned == 0 {
            " (no parallelism in this plan)"
        } else {
            ""
        }
    ));
    s.push_str(&format!(
        "Rows: {}; buffers: {} hit, {} read\nTime: planning {:.3} ms, execution {:.3} ms\n",
        r.rows, r.shared_hit_blocks, r.shared_read_blocks, r.planning_ms, r.execution_ms
    ));
    if !r.top.is_empty() {
        s.push_str("\nTop results:\n");
        for h in &r.top {
            s.push_str(&format!(
                "  {:.4}  {} {} {} {} p.{}: {}\n",
                h.rank,
                h.subdomain,
                h.document_type,
                h.meeting_name,
                h.meeting_date,
                h.page_number,
                h.headline.replace('\n', " ")
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_index_and_workers_from_a_plan() {
        let plan: Value = serde_json::from_str(
            r#"[{"Plan": {"Node Type": "Limit", "Actual Rows": 100, "Actual Total Time": 5.0,
                 "Actual Loops": 1, "Shared Hit Blocks": 40, "Shared Read Blocks": 2,
                 "Plans": [{"Node Type": "Gather Merge", "Workers Planned": 2, "Workers Launched": 1,
                   "Plans": [{"Node Type": "Bitmap Heap Scan", "Relation Name": "meeting_pages",
                     "Parallel Aware": true,
                     "Plans": [{"Node Type": "Bitmap Index Scan",
                                "Index Name": "meeting_pages_search_vector_gin"}]}]}]},
                 "Planning Time": 0.5, "Execution Time": 6.25}]"#,
        )
        .unwrap();
        let r = analyze_plan(&plan);
        assert!(r.uses_search_index);
        assert_eq!(r.indexes_used, vec!["meeting_pages_search_vector_gin"]);
        assert_eq!((r.workers_planned, r.workers_launched), (2, 1));
        assert_eq!(r.rows, 100);
        assert_eq!(r.execution_ms, 6.25);
        assert_eq!(r.plan.len(), 4);
        assert!(r.plan[2].starts_with("    Parallel Bitmap Heap Scan on meeting_pages"));
        assert!(
            r.plan[3].starts_with("      Bitmap Index Scan using meeting_pages_search_vector_gin")
        );
    }
}
