//! `civicload refresh`: after upstream re-OCRs, additions and deletions (in old and new
//! meetings), a refresh ends with exactly the source's pages, fetches only the changed
//! pages' text (asserted in requests and bytes, counted by a proxy and by civicload),
//! guards deletions like `verify --repair`, and `--changed-only` leaves untouched
//! municipalities alone.
// Tests talk to PostgreSQL directly with sqlx (clippy.toml steers the program to stages::store::sql).
#![allow(clippy::disallowed_methods)]

mod support;

use std::sync::atomic::Ordering;

use support::proxy::{FaultPlan, FaultProxy};
use support::*;

/// Requests to read a table of `n` rows by keyset `arrayfirst` pages of 1,000: the full
/// pages, then the short one (and one more after a page of a multiple of 100 rows, which
/// could be civic.band's cap of 100 without the service secret).
fn keyset_requests(n: u64) -> u64 {
    let r = n % 1000;
    n / 1000 + 1 + u64::from(r > 0 && r.is_multiple_of(100))
}

/// Id-read requests over every table of the corpus as it is now.
fn id_read_requests(corpus: &Corpus) -> u64 {
    let summary = corpus.summary();
    let mut total = 0;
    for m in summary["municipalities"].as_object().unwrap().values() {
        for t in m["tables"].as_object().unwrap().values() {
            total += keyset_requests(t["rows"].as_u64().unwrap());
        }
    }
    total
}

/// (job, mode, id_route, fetched, created, updated, deleted, requests, bytes, verified)
type JobCost = (
    String,
    String,
    Option<String>,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    bool,
);

async fn job_costs(db: &TestDb) -> Vec<JobCost> {
    let mut conn = db.connect().await;
    sqlx::query_as(
        "SELECT m.subdomain || '/' || j.document_type, j.mode, j.id_route, j.pages_fetched,
                j.pages_created, j.pages_updated, j.pages_deleted, j.source_requests, j.source_bytes,
                j.verified_at IS NOT NULL
         FROM backfill_jobs j JOIN municipalities m ON m.id = j.municipality_id ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_ends_exact_and_fetches_only_the_changed_pages() {
    init();
    let corpus = Corpus::cached(6_000, 5, 12, 0).copy("refresh");
    let server = Datasette::start(&corpus);
    let upstream: std::net::SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let proxy = FaultProxy::start(upstream, FaultPlan::none()).await;
    let template = proxy.template(&server.template, upstream);
    let db = TestDb::new("refresh");
    let subs = corpus.subdomains().join(",");
    let out = civicload(&db, Some(&template), &["backfill", "--subdomain", &subs]);
    assert!(out.status.success(), "{}", text(&out));
    let backfill_bytes = proxy.counts.bytes.swap(0, Ordering::Relaxed);
    let backfill_requests = proxy.counts.requests.swap(0, Ordering::Relaxed);
    let recorded: i64 = job_costs(&db).await.iter().map(|j| j.8).sum();
    assert!(
        recorded > 0 && recorded as u64 <= backfill_bytes,
        "{recorded} vs {backfill_bytes}"
    );

    // Nothing changed: ids only, by keyset pages of 1,000.
    let id_reads = id_read_requests(&corpus);
    let out = civicload(&db, Some(&template), &["refresh", "--subdomain", "all"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        proxy.counts.requests.swap(0, Ordering::Relaxed),
        id_reads,
        "{}",
        text(&out)
    );
    let unchanged_bytes = proxy.counts.bytes.swap(0, Ordering::Relaxed);
    assert!(
        unchanged_bytes * 50 < backfill_bytes,
        "an unchanged refresh moved {unchanged_bytes} bytes, more than 2% of the backfill's {backfill_bytes}"
    );
    for j in job_costs(&db).await {
        assert_eq!((j.1.as_str(), j.3, j.9), ("refresh", 0, true), "{j:?}");
    }

    // Upstream: re-OCRs (new ids for old pages), deletions and new meetings in two
    // municipalities.
    let subsn = corpus.subdomains();
    let (a, b) = (
        corpus.largest(),
        subsn
            .iter()
            .find(|s| **s != corpus.largest())
            .unwrap()
            .clone(),
    );
    corpus.mutate(&a, 5, 4, 6, 3);
    corpus.mutate(&b, 3, 0, 0, 4);
    let out = civicload(
        &db,
        Some(&template),
        &["refresh", "--subdomain", "all", "--concurrency", "2"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_same_pages(&corpus.expected_pages(), &db.pages().await);
    let costs = job_costs(&db).await;
    let sum = |f: fn(&JobCost) -> i64| costs.iter().map(f).sum::<i64>();
    // Only the 14 changed pages' text was fetched: 8 replaced in place, 6 created, 4 removed.
    assert_eq!(
        (sum(|j| j.3), sum(|j| j.4), sum(|j| j.5), sum(|j| j.6)),
        (14, 6, 8, 4),
        "{costs:#?}"
    );
    let changed_jobs = costs.iter().filter(|j| j.3 > 0).count() as u64;
    let requests = proxy.counts.requests.swap(0, Ordering::Relaxed);
    assert_eq!(
        requests,
        id_read_requests(&corpus) + 2 * changed_jobs,
        "the columns and one id__in request per changed job: {costs:#?}"
    );
    assert_eq!(sum(|j| j.7) as u64, requests);
    let changed_bytes = proxy.counts.bytes.swap(0, Ordering::Relaxed);
    assert!(
        changed_bytes < unchanged_bytes + 14 * 8_000,
        "{changed_bytes} vs {unchanged_bytes}"
    );
    assert!(
        costs
            .iter()
            .all(|j| j.2.as_deref() == Some("keyset_json") && j.9),
        "{costs:#?}"
    );
    println!(
        "backfill {backfill_requests} requests {backfill_bytes} B; unchanged refresh {} requests {unchanged_bytes} B ({:.2}%); 14 pages changed: {requests} requests {changed_bytes} B ({:.2}%)",
        id_reads,
        unchanged_bytes as f64 * 100.0 / backfill_bytes as f64,
        changed_bytes as f64 * 100.0 / backfill_bytes as f64
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deletions_beyond_the_safe_share_need_force() {
    init();
    let corpus = Corpus::cached(3_000, 3, 14, 0).copy("guard");
    let server = Datasette::start(&corpus);
    let db = TestDb::new("guard");
    let sub = corpus.largest();
    let out = civicload(
        &db,
        Some(&server.template),
        &["backfill", "--subdomain", &sub],
    );
    assert!(out.status.success(), "{}", text(&out));
    let held = db.pages().await.len();
    corpus.mutate(&sub, 0, (held / 10) as u32, 0, 5);
    let out = civicload(
        &db,
        Some(&server.template),
        &["refresh", "--subdomain", &sub],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("--force"), "{}", text(&out));
    assert_eq!(
        db.pages().await.len(),
        held,
        "nothing may be deleted without --force"
    );
    let out = civicload(
        &db,
        Some(&server.template),
        &["refresh", "--subdomain", &sub, "--force"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let expected: Pages = corpus
        .expected_pages()
        .into_iter()
        .filter(|(k, _)| k.subdomain == sub)
        .collect();
    assert_same_pages(&expected, &db.pages().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn changed_only_skips_untouched_municipalities() {
    init();
    let corpus = Corpus::cached(4_000, 4, 16, 0).copy("changed");
    let server = Datasette::start(&corpus);
    let db = TestDb::new("changed");
    let sites = corpus.dir.join("sites.csv");
    let out = civicload(
        &db,
        None,
        &["municipalities", "sync", "--from", path_str(&sites)],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = civicload(
        &db,
        Some(&server.template),
        &["backfill", "--subdomain", "all"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let victim = corpus.largest();
    corpus.mutate(&victim, 2, 1, 3, 6);
    let out = civicload(
        &db,
        Some(&server.template),
        &[
            "refresh",
            "--subdomain",
            "all",
            "--changed-only",
            "--sites",
            path_str(&sites),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_same_pages(&corpus.expected_pages(), &db.pages().await);
    for j in job_costs(&db).await {
        let refreshed = j.1 == "refresh";
        assert_eq!(refreshed, j.0.starts_with(&format!("{victim}/")), "{j:?}");
    }
    // Nothing changed since: a second pass refreshes nothing.
    let out = civicload(
        &db,
        Some(&server.template),
        &[
            "refresh",
            "--subdomain",
            "all",
            "--changed-only",
            "--sites",
            path_str(&sites),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let runs = db.scalar_i64("SELECT count(*) FROM refresh_runs").await;
    assert_eq!(runs, 2, "only the victim's two jobs were ever refreshed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_killed_at_any_instant_resumes_to_the_exact_source() {
    init();
    let corpus = Corpus::cached(4_000, 3, 18, 0).copy("killrefresh");
    let server = Datasette::start(&corpus);
    let db = TestDb::new("killrefresh");
    let sub = corpus.largest();
    let out = civicload(
        &db,
        Some(&server.template),
        &["backfill", "--subdomain", &sub],
    );
    assert!(out.status.success(), "{}", text(&out));
    corpus.mutate(&sub, 250, 20, 300, 11);
    // Slow answers, so that the kills land inside the refresh: between requests, during a
    // batch's commit, during the deletes.
    let upstream: std::net::SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let mut plan = FaultPlan::none();
    plan.slow = 0.5;
    plan.slow_for = std::time::Duration::from_millis(300);
    let proxy = FaultProxy::start(upstream, plan).await;
    let template = proxy.template(&server.template, upstream);
    for (i, ms) in [350u64, 900, 1500, 2300].iter().enumerate() {
        let mut child = civicload_command(&db, Some(&template), &["refresh", "--subdomain", &sub])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(*ms)).await;
        let _ = child.kill();
        let _ = child.wait();
        assert!(db.pages().await.len() > 1, "round {i}");
    }
    let out = civicload(
        &db,
        Some(&server.template),
        &["refresh", "--subdomain", &sub],
    );
    assert!(out.status.success(), "{}", text(&out));
    let expected: Pages = corpus
        .expected_pages()
        .into_iter()
        .filter(|(k, _)| k.subdomain == sub)
        .collect();
    assert_same_pages(&expected, &db.pages().await);
    let verified = db
        .scalar_i64("SELECT count(*) FROM backfill_jobs WHERE verified_at IS NOT NULL AND status = 'completed' AND lease_owner IS NULL")
        .await;
    assert_eq!(verified, 2);
}
