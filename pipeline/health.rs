//! `civicload health [--json]`: seed 004's validation report for civicload's tables, each
//! line with a verdict: ✓ good, ○ fine or not yet known, ⚠ needs attention (and what to
//! run). The thresholds are the seed's; where a ratio means nothing on a tiny table, the
//! line says so instead of warning.

use chrono::{DateTime, Utc};
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::Table;
use serde::Serialize;
use sqlx::PgPool;
use stages::store::maintenance::{self, IndexStats, ServerStats, TableStats};
use stages::store::observer::upkeep::{IndexFact, TableFact};
use stages::store::search::{self, VectorTarget, SEARCH_INDEXES};
use stages::target::Generation;

use crate::cli::HealthArgs;

use crate::vectorize::bytes;

/// A check's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// ✓
    Good,
    /// ○
    Info,
    /// ⚠
    Warning,
}

impl Verdict {
    /// ✓, ○ or ⚠.
    pub fn symbol(self) -> &'static str {
        match self {
            Verdict::Good => "✓",
            Verdict::Info => "○",
            Verdict::Warning => "⚠",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// The seed's test it belongs to, e.g. "dead tuples".
    pub check: &'static str,
    /// The table, index or setting it is about.
    pub object: String,
    pub value: String,
    pub verdict: Verdict,
    pub symbol: &'static str,
    /// Why, and what to do when it is a warning.
    pub note: String,
}

fn check(
    check: &'static str,
    object: impl Into<String>,
    value: impl Into<String>,
    verdict: Verdict,
    note: impl Into<String>,
) -> Check {
    Check {
        check,
        object: object.into(),
        value: value.into(),
        verdict,
        symbol: verdict.symbol(),
        note: note.into(),
    }
}

/// Recent enough to count as "recently vacuumed/analyzed" (seed 004's weekly check).
const RECENT_DAYS: i64 = 7;
/// Below this many dead rows a high ratio is noise (a 20-row job table after a few
/// updates), not bloat: autovacuum's own base threshold is 50 rows.
const DEAD_ROWS_WORTH_A_WARNING: i64 = 1000;
/// Too few block accesses to judge a cache hit ratio.
const CACHE_MIN_BLOCKS: i64 = 1000;
/// Below this many pages a sequential scan is the right plan for a search.
const SEQSCAN_FINE_BELOW: i64 = 10_000;

/// Gathers every check.
pub async fn collect(pool: &PgPool) -> anyhow::Result<Vec<Check>> {
    let tables = maintenance::table_stats(pool).await?;
    let indexes = maintenance::index_stats(pool).await?;
    let server = maintenance::server_stats(pool).await?;
    let counts = maintenance::counts(pool).await?;
    let now = Utc::now();
    let mut out = Vec::new();

    for t in &tables {
        out.push(vacuum_analyze(t, now));
    }
    for t in &tables {
        out.push(dead_tuples(t));
    }

    // Search readiness: vectors and the search indexes.
    let pages_live = tables
        .iter()
        .find(|t| t.table == "meeting_pages")
        .map(|t| t.live_rows)
        .unwrap_or(0);
    for target in VectorTarget::ALL {
        out.push(search_vectors(
            target,
            search::missing_count(pool, target).await?,
        ));
    }
    for index in &SEARCH_INDEXES {
        out.push(search_index(
            index.name,
            search::index_state(pool, index.name).await?,
        ));
    }
    let (uses_index, plan) = maintenance::search_plan_uses_index(pool, "budget").await?;
    out.push(search_plan(uses_index, plan, pages_live));

    for i in &indexes {
        out.push(index_usage(i));
    }

    out.extend(autovacuum(&server, &tables));

    for t in &tables {
        out.push(size(t));
    }
    for t in &tables {
        out.push(cache(t));
    }
    out.push(storage(&server, &tables, counts));
    out.push(bulk_foreign_keys(
        stages::store::integrity::may_skip_fk_checks(pool).await?,
    ));
    Ok(out)
}

/// Whether every row of `target` has its search vector (`missing` rows have none).
fn search_vectors(target: VectorTarget, missing: i64) -> Check {
    if missing == 0 {
        check(
            "search vectors",
            target.table(),
            "none missing",
            Verdict::Good,
            "",
        )
    } else {
        check(
            "search vectors",
            target.table(),
            format!("{missing} {} without a vector", target.noun()),
            Verdict::Warning,
            "run `civicload vectorize`",
        )
    }
}

/// Whether search index `name` exists, is valid and has fastupdate off.
fn search_index(name: &'static str, state: Option<search::IndexState>) -> Check {
    match state {
        None => check(
            "search index",
            name,
            "missing",
            Verdict::Warning,
            "run `civicload maintain` to build it",
        ),
        Some(s) if !s.valid => check(
            "search index",
            name,
            "invalid (an interrupted build)",
            Verdict::Warning,
            "run `civicload maintain` to rebuild it",
        ),
        Some(s) if !s.fastupdate_off() => check(
            "search index",
            name,
            format!("{} {}, fastupdate on", s.method, bytes(s.bytes)),
            Verdict::Warning,
            "searches also scan its pending list (a vectorize was stopped?); run `civicload maintain`",
        ),
        Some(s) => check(
            "search index",
            name,
            format!("{} {}, fastupdate off", s.method, bytes(s.bytes)),
            Verdict::Good,
            "",
        ),
    }
}

/// Whether a search uses the GIN index (`plan` is the plan's summary); a sequential scan
/// is fine on fewer than [`SEQSCAN_FINE_BELOW`] pages.
fn search_plan(uses_index: bool, plan: String, pages_live: i64) -> Check {
    if uses_index {
        check(
            "search plan",
            "meeting_pages",
            plan,
            Verdict::Good,
            "the search uses the GIN index",
        )
    } else if pages_live < SEQSCAN_FINE_BELOW {
        check(
            "search plan",
            "meeting_pages",
            plan,
            Verdict::Info,
            format!("fewer than {SEQSCAN_FINE_BELOW} pages: a sequential scan is the cheaper plan"),
        )
    } else {
        check(
            "search plan",
            "meeting_pages",
            plan,
            Verdict::Warning,
            "the search does not use the GIN index; run `civicload maintain` (builds it, refreshes statistics)",
        )
    }
}

/// Autovacuum: on for the server, not left paused by a bulk load, statistics collected,
/// and each table's own settings.
fn autovacuum(server: &ServerStats, tables: &[TableStats]) -> Vec<Check> {
    let mut out = vec![if server.autovacuum == "on" {
        check("autovacuum", "server", "on", Verdict::Good, "")
    } else {
        check(
            "autovacuum",
            "server",
            server.autovacuum.clone(),
            Verdict::Warning,
            "autovacuum is off: dead rows pile up; turn it on in postgresql.conf",
        )
    }];
    if let Some(t) = tables.iter().find(|t| {
        t.table == "meeting_pages"
            && t.options
                .iter()
                .any(|o| o == maintenance::AUTOVACUUM_PAUSED)
    }) {
        out.push(check(
            "autovacuum",
            t.table.clone(),
            "paused",
            Verdict::Warning,
            "a bulk load paused it and has not finished: resume the backfill, or run `civicload maintain`",
        ));
    }
    if server.track_counts != "on" {
        out.push(check(
            "autovacuum",
            "track_counts",
            server.track_counts.clone(),
            Verdict::Warning,
            "statistics are not collected: autovacuum and this report are blind",
        ));
    }
    for t in tables {
        out.push(if t.options.is_empty() {
            check(
                "autovacuum",
                t.table.clone(),
                "server defaults",
                Verdict::Info,
                "",
            )
        } else {
            check(
                "autovacuum",
                t.table.clone(),
                t.options.join(", "),
                Verdict::Good,
                "custom configured",
            )
        });
    }
    out
}

fn ago(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match t {
        None => "never".into(),
        Some(t) => {
            let s = (now - t).num_seconds().max(0);
            match s {
                0..=119 => format!("{s} s ago"),
                120..=7199 => format!("{} min ago", s / 60),
                7200..=172_799 => format!("{} h ago", s / 3600),
                _ => format!("{} days ago", s / 86_400),
            }
        }
    }
}

fn latest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Seed 004 test 1: recently vacuumed and analyzed.
pub fn vacuum_analyze(t: &TableStats, now: DateTime<Utc>) -> Check {
    let vacuumed = latest(t.last_vacuum, t.last_autovacuum);
    let analyzed = latest(t.last_analyze, t.last_autoanalyze);
    let value = format!(
        "vacuumed {}, analyzed {}",
        ago(vacuumed, now),
        ago(analyzed, now)
    );
    let recent = |x: Option<DateTime<Utc>>| x.is_some_and(|x| (now - x).num_days() < RECENT_DAYS);
    let (verdict, note) = if t.live_rows == 0 && t.dead_rows == 0 {
        (Verdict::Info, "empty".to_string())
    } else if analyzed.is_none() {
        (
            Verdict::Warning,
            "never analyzed: the planner is guessing; run `civicload maintain`".to_string(),
        )
    } else if recent(vacuumed) && recent(analyzed) {
        (Verdict::Good, "recently vacuumed and analyzed".to_string())
    } else {
        (
            Verdict::Info,
            format!(
                "not within {RECENT_DAYS} days; autovacuum runs when changes reach its thresholds"
            ),
        )
    };
    check("vacuum/analyze", t.table.clone(), value, verdict, note)
}

/// Seed 004 test 2: dead-tuple ratio, <5% ✓, 5-10% ○, >10% ⚠.
pub fn dead_tuples(t: &TableStats) -> Check {
    let ratio = if t.live_rows > 0 {
        100.0 * t.dead_rows as f64 / t.live_rows as f64
    } else if t.dead_rows > 0 {
        100.0
    } else {
        0.0
    };
    let value = format!("{} dead / {} live ({ratio:.2}%)", t.dead_rows, t.live_rows);
    let (verdict, note) = if t.dead_rows == 0 {
        (Verdict::Good, "no dead rows".to_string())
    } else if ratio < 5.0 {
        (Verdict::Good, "below 5%".to_string())
    } else if ratio <= 10.0 {
        (
            Verdict::Info,
            "5-10%: autovacuum will get to it".to_string(),
        )
    } else if t.dead_rows < DEAD_ROWS_WORTH_A_WARNING {
        (
            Verdict::Info,
            format!("over 10% of a small table, but fewer than {DEAD_ROWS_WORTH_A_WARNING} rows"),
        )
    } else {
        (
            Verdict::Warning,
            "over 10%: run `civicload maintain` (VACUUM)".to_string(),
        )
    };
    check("dead tuples", t.table.clone(), value, verdict, note)
}

/// Seed 004 test 3: index usage (and validity).
pub fn index_usage(i: &IndexStats) -> Check {
    let value = format!(
        "{} {}, {} scans, {} tuples read",
        i.method,
        bytes(i.bytes),
        i.scans,
        i.tuples_read
    );
    let (verdict, note) = if !i.valid {
        (
            Verdict::Warning,
            "invalid (an interrupted build): writes maintain it, reads cannot use it; run `civicload maintain`",
        )
    } else if i.scans > 0 {
        (Verdict::Good, "used")
    } else {
        (
            Verdict::Info,
            "not yet used (normal before production traffic)",
        )
    };
    check(
        "index usage",
        format!("{}.{}", i.table, i.index),
        value,
        verdict,
        note,
    )
}

/// Seed 004 test 6: sizes.
pub fn size(t: &TableStats) -> Check {
    let value = format!(
        "total {}, heap {}, with TOAST {}, indexes {}",
        bytes(t.total_bytes),
        bytes(t.heap_bytes),
        bytes(t.table_bytes),
        bytes(t.index_bytes)
    );
    const MB: i64 = 1 << 20;
    const GB: i64 = 1 << 30;
    let (verdict, note) = match t.total_bytes {
        b if b < MB => (Verdict::Good, "SMALL: <1MB"),
        b if b < GB => (Verdict::Good, "MEDIUM: <1GB"),
        b if b < 100 * GB => (Verdict::Good, "LARGE: <100GB"),
        _ => (Verdict::Info, "VERY LARGE: plan maintenance windows"),
    };
    check("size", t.table.clone(), value, verdict, note)
}

/// Seed 004 test 7: cache hit ratio, >99% ✓ excellent, 95-99% ✓ good, 90-95% ○, <90% ⚠.
pub fn cache(t: &TableStats) -> Check {
    let hit = t.heap_blocks_hit + t.index_blocks_hit;
    let read = t.heap_blocks_read + t.index_blocks_read;
    let total = hit + read;
    let ratio = if total > 0 {
        100.0 * hit as f64 / total as f64
    } else {
        0.0
    };
    let value = format!("{ratio:.2}% ({hit} hits, {read} reads)");
    let (verdict, note) = if total < CACHE_MIN_BLOCKS {
        (Verdict::Info, "too few reads to judge")
    } else if ratio > 99.0 {
        (Verdict::Good, "EXCELLENT: >99% cache hits")
    } else if ratio >= 95.0 {
        (Verdict::Good, "GOOD: 95-99%")
    } else if ratio >= 90.0 {
        (Verdict::Info, "OK: 90-95%")
    } else {
        (
            Verdict::Warning,
            "below 90%: shared_buffers may be too small (see scripts/postgresql.conf.sample), or the cache is cold after a load",
        )
    };
    check("cache hit ratio", t.table.clone(), value, verdict, note)
}

/// Seed 004 test 8: storage summary.
fn storage(server: &ServerStats, tables: &[TableStats], counts: maintenance::Counts) -> Check {
    let ours: i64 = tables.iter().map(|t| t.total_bytes).sum();
    let value = format!(
        "database {} {}, civicload tables {}, {} pages and {} documents in meeting_page_stats (planner estimate {} pages)",
        server.database,
        bytes(server.database_bytes),
        bytes(ours),
        counts.pages_in_stats,
        counts.documents_in_stats,
        counts.pages_estimated
    );
    let est = counts.pages_estimated as f64;
    let stale = est > 1000.0 && ((counts.pages_in_stats as f64 - est).abs() / est) > 0.05;
    if stale {
        check(
            "storage",
            "database",
            value,
            Verdict::Info,
            "meeting_page_stats differs from the planner's estimate by over 5%: refresh it with `civicload maintain`",
        )
    } else {
        check(
            "storage",
            "database",
            value,
            Verdict::Good,
            format!("PostgreSQL {}", server.server_version),
        )
    }
}

/// How a bulk load by this role checks the references of the pages it writes (see
/// stages/src/store/integrity.rs).
fn bulk_foreign_keys(once: bool) -> Check {
    let (value, verdict, note) = match once {
        true => (
            "checked once after the load",
            Verdict::Good,
            "this role may set session_replication_role",
        ),
        false => (
            "checked row by row",
            Verdict::Info,
            stages::store::integrity::GRANT_HINT,
        ),
    };
    check(
        "bulk loads",
        "meeting_pages foreign keys",
        value,
        verdict,
        note,
    )
}

/// The report as a table.
pub fn render(checks: &[Check]) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec!["", "check", "object", "value", "note"]);
    for c in checks {
        t.add_row(vec![
            c.symbol.to_string(),
            c.check.to_string(),
            c.object.clone(),
            c.value.clone(),
            c.note.clone(),
        ]);
    }
    let warnings = checks
        .iter()
        .filter(|c| c.verdict == Verdict::Warning)
        .count();
    format!(
        "{t}\n{} checks: {} ✓, {} ○, {warnings} ⚠.",
        checks.len(),
        checks.iter().filter(|c| c.verdict == Verdict::Good).count(),
        checks.iter().filter(|c| c.verdict == Verdict::Info).count(),
    )
}

/// `civicload health`.
pub async fn run(pool: &PgPool, args: &HealthArgs) -> anyhow::Result<()> {
    let checks = collect(pool).await?;
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        crate::outln!("{}", render(&checks));
    }
    Ok(())
}

/// `vectorize`, `maintain`, `health` and `search-bench` with `--target civic-observer`:
/// the application's tables (see `stages::store::observer::upkeep`).
pub async fn observer_command(
    pool: &PgPool,
    generation: Generation,
    command: &crate::cli::Command,
) -> anyhow::Result<u8> {
    use crate::cli::Command;
    use stages::store::observer::upkeep;
    match command {
        Command::Vectorize(_) => {
            crate::outln!("Nothing to vectorize: civicload writes every page of civic-observer's tables with its vector ({generation}).");
        }
        Command::Maintain(_) => {
            let done = upkeep::maintain(pool, generation).await?;
            crate::outln!("Vacuumed and analyzed meetings_meetingpage, meetings_meetingdocument and municipalities_muni.");
            for b in &done.built {
                crate::outln!("Built the missing index: {b}.");
            }
            for n in &done.notes {
                crate::outln!("Note: {n}.");
            }
        }
        Command::Health(args) => {
            let checks = observer_checks(pool, generation).await?;
            if args.json {
                crate::outln!("{}", serde_json::to_string_pretty(&checks)?);
            } else {
                crate::outln!("{}", render(&checks));
            }
        }
        Command::SearchBench(args) => {
            // The application's own search, timed like civicload's (pipeline/search_bench.rs).
            let report = crate::search_bench::run_observer(pool, generation, args).await?;
            match args.json {
                true => crate::outln!("{}", serde_json::to_string(&report)?),
                false => crate::outln!("{}", crate::search_bench::render(&report, args.show)),
            }
        }
        _ => unreachable!("only the upkeep commands come here"),
    }
    Ok(crate::exit::EXIT_OK)
}

/// civic-observer's tables and search indexes, with verdicts.
async fn observer_checks(pool: &PgPool, generation: Generation) -> anyhow::Result<Vec<Check>> {
    use stages::store::observer::upkeep;
    let mut checks = vec![check(
        "schema generation",
        "meetings_meetingpage",
        generation.to_string(),
        Verdict::Info,
        "detected from the columns at start",
    )];
    for t in upkeep::tables(pool).await? {
        checks.extend(observer_table(t));
    }
    checks.extend(observer_search_indexes(
        &upkeep::indexes(pool).await?,
        generation,
    ));
    Ok(checks)
}

/// One civic-observer table: its dead tuples and its size.
fn observer_table(t: TableFact) -> [Check; 2] {
    let share = t.dead_rows as f64 / (t.live_rows + t.dead_rows).max(1) as f64;
    let verdict = if share > 0.2 && t.dead_rows > 10_000 {
        Verdict::Warning
    } else {
        Verdict::Good
    };
    [
        check(
            "dead tuples",
            t.table.clone(),
            format!(
                "{} live, {} dead ({:.1}%)",
                t.live_rows,
                t.dead_rows,
                share * 100.0
            ),
            verdict,
            if verdict == Verdict::Warning {
                "run `civicload --target civic-observer maintain`"
            } else {
                ""
            },
        ),
        check(
            "size",
            t.table,
            format!("{:.1} MB", t.total_bytes as f64 / 1e6),
            Verdict::Info,
            "",
        ),
    ]
}

/// The search indexes of `generation` (GIN for G1, BM25 for G2) among civic-observer's
/// `indexes`: each valid, and at least one.
fn observer_search_indexes(indexes: &[IndexFact], generation: Generation) -> Vec<Check> {
    let search: Vec<_> = indexes
        .iter()
        .filter(|i| match generation {
            Generation::G1 => i.method == "gin",
            Generation::G2 => i.method == "bm25",
        })
        .collect();
    let mut checks = Vec::new();
    for i in &search {
        checks.push(check(
            "search index",
            i.index.clone(),
            format!(
                "{} on {}, {:.1} MB",
                i.method,
                i.table,
                i.bytes as f64 / 1e6
            ),
            if i.valid {
                Verdict::Good
            } else {
                Verdict::Warning
            },
            if i.valid {
                ""
            } else {
                "invalid (an interrupted build): REINDEX INDEX CONCURRENTLY it"
            },
        ));
    }
    if search.is_empty() {
        let (what, note) = match generation {
            Generation::G1 => ("no GIN index on search_vector", "`civicload --target civic-observer maintain` builds it (CONCURRENTLY once the table has rows)"),
            Generation::G2 => ("no BM25 index exists", "the operators build it by hand with pg_search, outside the application's migrations"),
        };
        checks.push(check(
            "search index",
            "meetings_meetingpage",
            what,
            Verdict::Warning,
            note,
        ));
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(live: i64, dead: i64) -> TableStats {
        TableStats {
            table: "meeting_pages".into(),
            live_rows: live,
            dead_rows: dead,
            modified_since_analyze: 0,
            last_vacuum: None,
            last_autovacuum: None,
            last_analyze: None,
            last_autoanalyze: None,
            options: vec![],
            heap_bytes: 0,
            table_bytes: 0,
            index_bytes: 0,
            total_bytes: 0,
            heap_blocks_hit: 0,
            heap_blocks_read: 0,
            index_blocks_hit: 0,
            index_blocks_read: 0,
        }
    }

    #[test]
    fn dead_tuple_thresholds_follow_the_seed() {
        assert_eq!(dead_tuples(&table(100_000, 0)).verdict, Verdict::Good);
        assert_eq!(dead_tuples(&table(100_000, 4_999)).verdict, Verdict::Good);
        assert_eq!(dead_tuples(&table(100_000, 7_000)).verdict, Verdict::Info);
        assert_eq!(
            dead_tuples(&table(100_000, 10_001)).verdict,
            Verdict::Warning
        );
        // A tiny, busy table: a high ratio of a few rows is not bloat.
        assert_eq!(dead_tuples(&table(24, 300)).verdict, Verdict::Info);
    }

    #[test]
    fn never_analyzed_is_a_warning_unless_empty() {
        let now = Utc::now();
        assert_eq!(vacuum_analyze(&table(0, 0), now).verdict, Verdict::Info);
        assert_eq!(vacuum_analyze(&table(10, 0), now).verdict, Verdict::Warning);
        let mut t = table(10, 0);
        t.last_autovacuum = Some(now);
        t.last_analyze = Some(now - chrono::Duration::hours(1));
        assert_eq!(vacuum_analyze(&t, now).verdict, Verdict::Good);
        t.last_analyze = Some(now - chrono::Duration::days(30));
        assert_eq!(vacuum_analyze(&t, now).verdict, Verdict::Info);
    }

    #[test]
    fn cache_ratio_thresholds_follow_the_seed() {
        let mut t = table(1, 0);
        t.heap_blocks_hit = 995;
        t.heap_blocks_read = 5;
        assert_eq!(cache(&t).verdict, Verdict::Good);
        t.heap_blocks_hit = 920;
        t.heap_blocks_read = 80;
        assert_eq!(cache(&t).verdict, Verdict::Info);
        t.heap_blocks_hit = 800;
        t.heap_blocks_read = 200;
        assert_eq!(cache(&t).verdict, Verdict::Warning);
        t.heap_blocks_hit = 8;
        t.heap_blocks_read = 2;
        assert_eq!(cache(&t).verdict, Verdict::Info);
    }
}
