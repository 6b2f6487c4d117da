//! civicload through PgBouncer in transaction-pooling mode (issue 3): every command a
//! bulk load uses works when each transaction may run on another server connection, from
//! the database's first connection (creation and migrations) to the post-load phase, and
//! several processes share the work through the pooler exactly as they do directly.
//!
//! The pooler is a private pgbouncer (tests/support/pgbouncer.rs) with 3 server connections
//! for many more client connections, so the clients really do share them.
// Tests talk to PostgreSQL directly with sqlx (clippy.toml steers the program to stages::store::sql).
#![allow(clippy::disallowed_methods)]

mod support;

use std::process::{Output, Stdio};

use support::pgbouncer::PgBouncer;
use support::*;

fn run_at(url: &str, template: Option<&str>, args: &[&str]) -> Output {
    civicload_command_at(url, template, args)
        .output()
        .expect("the civicload binary runs")
}

#[track_caller]
fn assert_ok(out: &Output, what: &str, bouncer: &PgBouncer) {
    assert!(
        out.status.success(),
        "{what} through pgbouncer failed:\n{}\n--- pgbouncer log (tail) ---\n{}",
        text(out),
        tail(&bouncer.log(), 20)
    );
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The search-readiness work of the post-load phase is done: every vector built, both
/// GIN indexes valid, the stats view refreshed with every page.
async fn assert_search_ready(db: &TestDb, pages: usize) {
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM meeting_pages WHERE search_vector IS NULL")
            .await,
        0,
        "every page has its search vector"
    );
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE c.relname IN ('meeting_pages_search_vector_gin', 'meeting_documents_name_vector_gin')
               AND i.indisvalid"
        )
        .await,
        2,
        "both search indexes are built"
    );
    assert_eq!(
        db.scalar_i64("SELECT coalesce(sum(page_count), 0)::bigint FROM meeting_page_stats")
            .await,
        pages as i64,
        "meeting_page_stats is refreshed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn backfill_status_verify_and_maintenance_work_through_pgbouncer_in_transaction_mode() {
    init();
    let corpus = Corpus::cached(6_000, 5, 12, 0);
    let server = Datasette::start(&corpus);
    let bouncer = PgBouncer::start();
    let db = TestDb::new("pgbouncer");
    let url = bouncer.url(&db);
    let sites = corpus.dir.join("sites.csv");

    // The database's first connection goes through the pooler: it is created and migrated
    // there.
    let out = run_at(
        &url,
        None,
        &["municipalities", "sync", "--from", path_str(&sites)],
    );
    assert_ok(&out, "municipalities sync", &bouncer);

    // Four jobs at once (each with its own client connection) on three server connections.
    let out = run_at(
        &url,
        Some(&server.template),
        &[
            "backfill",
            "--subdomain",
            "all",
            "--concurrency",
            "4",
            "--batch-size",
            "250",
        ],
    );
    assert_ok(&out, "backfill", &bouncer);
    assert!(
        text(&out).contains("Search ready"),
        "the post-load phase ran in this process:\n{}",
        text(&out)
    );
    let expected = corpus.expected_pages();
    assert_same_pages(&expected, &db.pages().await);
    assert_search_ready(&db, expected.len()).await;

    let out = run_at(&url, None, &["status", "--json"]);
    assert_ok(&out, "status", &bouncer);
    let jobs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(jobs.len(), 2 * corpus.subdomains().len());
    for j in &jobs {
        assert_eq!(j["status"], "completed", "{j}");
        assert!(!j["verified_at"].is_null(), "job not verified: {j}");
    }

    let out = run_at(
        &url,
        Some(&server.template),
        &["verify", "--subdomain", "all", "--deep"],
    );
    assert_ok(&out, "verify --deep", &bouncer);
    for args in [
        &["status", "--totals"][..],
        &["vectorize"],
        &["maintain", "--reindex"],
        &["health", "--json"],
    ] {
        let out = run_at(&url, None, args);
        assert_ok(&out, &args.join(" "), &bouncer);
    }
    let pooled = run_at(&url, None, &["digest"]);
    assert_ok(&pooled, "digest", &bouncer);
    assert_eq!(
        String::from_utf8_lossy(&pooled.stdout),
        String::from_utf8_lossy(&civicload(&db, None, &["digest"]).stdout),
        "the same digest through the pooler and directly"
    );
    assert_same_pages(&expected, &db.pages().await);
    assert_search_ready(&db, expected.len()).await;
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM maintenance_leases")
            .await,
        0,
        "every maintenance lease was released"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn three_processes_through_pgbouncer_share_the_work_and_end_exact() {
    init();
    let corpus = Corpus::cached(6_000, 5, 12, 0);
    let server = Datasette::start(&corpus);
    let bouncer = PgBouncer::start();
    let db = TestDb::new("pgbouncer3");
    let url = bouncer.url(&db);
    let sites = corpus.dir.join("sites.csv");
    let out = run_at(
        &url,
        None,
        &["municipalities", "sync", "--from", path_str(&sites)],
    );
    assert_ok(&out, "municipalities sync", &bouncer);

    let children: Vec<_> = (0..3)
        .map(|_| {
            civicload_command_at(
                &url,
                Some(&server.template),
                &[
                    "backfill",
                    "--subdomain",
                    "all",
                    "--concurrency",
                    "2",
                    "--batch-size",
                    "200",
                ],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let mut fetched_by_all = 0i64;
    let mut post_load_runs = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_ok(&out, "a concurrent backfill", &bouncer);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        post_load_runs += usize::from(stdout.contains("Search ready"));
        let total_line = stdout
            .lines()
            .find(|l| l.contains("TOTAL"))
            .unwrap_or_default();
        let numbers: Vec<i64> = total_line
            .split('┆')
            .filter_map(|c| c.trim().parse().ok())
            .collect();
        fetched_by_all += numbers.first().copied().unwrap_or(0);
    }
    let rows = corpus.summary()["totals"]["rows"].as_i64().unwrap();
    assert_eq!(
        fetched_by_all, rows,
        "each source row is fetched by exactly one process"
    );
    let expected = corpus.expected_pages();
    assert_same_pages(&expected, &db.pages().await);
    for j in status_json(&db) {
        assert_eq!(j["status"], "completed", "{j}");
        assert!(!j["verified_at"].is_null(), "job not verified: {j}");
        assert_eq!(
            j["pages_fetched"].as_i64(),
            j["expected_count"].as_i64(),
            "{j}"
        );
    }
    assert!(
        post_load_runs >= 1,
        "the last process to finish prepares the database for search"
    );
    assert_search_ready(&db, expected.len()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn maintenance_leases_through_pgbouncer_admit_one_holder_and_outlive_no_dead_process() {
    use stages::store::leases::Lease;
    init();
    let bouncer = PgBouncer::start();
    let db = TestDb::new("pgbouncerlease");
    let url = bouncer.url(&db);
    let out = run_at(&url, None, &["migrate"]);
    assert_ok(&out, "migrate", &bouncer);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await
        .unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let me = format!("{}/{}/aaaa", host.trim(), std::process::id());
    let other = format!("{}/{}/bbbb", host.trim(), std::process::id());

    let held = Lease::try_acquire(&pool, "post-load", &me)
        .await
        .unwrap()
        .expect("a free lease is taken");
    assert!(
        Lease::try_acquire(&pool, "post-load", &other)
            .await
            .unwrap()
            .is_none(),
        "a held lease is not taken by another owner"
    );
    assert!(
        Lease::try_acquire(&pool, "maintain", &other)
            .await
            .unwrap()
            .is_some(),
        "leases of other names are independent"
    );
    held.release().await.unwrap();
    let taken = Lease::try_acquire(&pool, "post-load", &other)
        .await
        .unwrap()
        .expect("a released lease is free");
    drop(taken);

    // A holder of this machine whose process is gone (kill -9) loses its lease at once; one
    // elsewhere keeps it until it expires.
    let mut conn = db.connect().await;
    sqlx::query(
        "UPDATE maintenance_leases SET owner = $1, expires_at = now() + interval '1 hour'
         WHERE name = 'post-load'",
    )
    .bind(format!("{}/4000000/dead", host.trim()))
    .execute(&mut conn)
    .await
    .unwrap();
    assert!(Lease::try_acquire(&pool, "post-load", &me)
        .await
        .unwrap()
        .is_some());
    sqlx::query(
        "UPDATE maintenance_leases SET owner = 'otherhost/4000000/dead', expires_at = now() + interval '1 hour'
         WHERE name = 'post-load'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    assert!(Lease::try_acquire(&pool, "post-load", &me)
        .await
        .unwrap()
        .is_none());
    sqlx::query("UPDATE maintenance_leases SET expires_at = now() - interval '1 second'")
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(Lease::try_acquire(&pool, "post-load", &me)
        .await
        .unwrap()
        .is_some());
    pool.close().await;
}
