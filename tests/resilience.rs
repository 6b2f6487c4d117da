//! The bulk load survives what a week-long run meets: source faults (through a
//! fault-injecting proxy in front of the real Datasette), SIGKILL at random instants,
//! SIGTERM, a PostgreSQL restart, and several processes sharing the work. Every test ends
//! by comparing PostgreSQL with the corpus page by page.
// Tests talk to PostgreSQL directly with sqlx (clippy.toml steers the program to stages::store::sql).
#![allow(clippy::disallowed_methods)]

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use rand::Rng;
use support::proxy::{FaultPlan, FaultProxy};
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn source_faults_are_retried_and_the_result_is_exact() {
    init();
    let corpus = Corpus::cached(12_000, 8, 21, 4);
    let server = Datasette::start(&corpus);
    let upstream: std::net::SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let mut plan = FaultPlan::acceptance(7);
    // Raised from the acceptance mix so that a corpus this small meets every fault.
    plan.reset_mid_body = 0.04;
    plan.truncated_body = 0.04;
    plan.too_many_requests = 0.04;
    let proxy = FaultProxy::start(upstream, plan).await;
    let template = proxy.template(&server.template, upstream);
    let db = TestDb::new("faults");
    let subs = corpus.subdomains().join(",");

    let mut cmd = civicload_command(
        &db,
        Some(&template),
        &[
            "backfill",
            "--subdomain",
            &subs,
            "--max-retries",
            "12",
            "--concurrency",
            "3",
        ],
    );
    // The proxy runs on this runtime: wait for the process off it.
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let c = &proxy.counts;
    use std::sync::atomic::Ordering::Relaxed;
    assert!(
        c.server_errors.load(Relaxed) > 0
            && c.resets.load(Relaxed) > 0
            && c.truncated.load(Relaxed) > 0
            && c.too_many.load(Relaxed) > 0,
        "the proxy must have injected every fault: {}",
        proxy.summary()
    );
    assert!(
        out.status.success(),
        "backfill through faults failed ({}):\n{}",
        proxy.summary(),
        text(&out)
    );
    assert_same_pages(&corpus.expected_pages(), &db.pages().await);
    for j in status_json(&db) {
        assert_eq!(j["status"], "completed", "{j}");
        assert!(!j["verified_at"].is_null(), "{j}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_sigkills_at_random_instants_then_resume_end_exact() {
    init();
    let corpus = Corpus::cached(30_000, 14, 11, 9);
    let server = Datasette::start(&corpus);
    let db = TestDb::new("kill9");
    let subs = corpus.subdomains().join(",");
    let mut rng = rand::rng();
    let mut killed_mid_run = 0;
    let mut left_paused = 0;
    // to_regclass: a round killed before the migrations committed leaves no table yet.
    // meeting_pages is partitioned (migration 0010): the pause is on its partitions.
    let paused = "SELECT (count(*) > 0)::int::bigint FROM pg_class c
                  WHERE (c.oid = to_regclass('meeting_pages')
                         OR c.oid IN (SELECT inhrelid FROM pg_inherits
                                      WHERE inhparent = to_regclass('meeting_pages')))
                    AND 'autovacuum_enabled=false' = ANY(c.reloptions)";
    for round in 0..10 {
        let mut child = civicload_command(
            &db,
            Some(&server.template),
            &[
                "backfill",
                "--subdomain",
                &subs,
                "--resume",
                "--batch-size",
                "400",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        let wait = Duration::from_millis(rng.random_range(200..1500));
        let started = Instant::now();
        while started.elapsed() < wait && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(10));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed_mid_run += 1;
        }
        let _ = child.wait();
        eprintln!("round {round}: stopped after {wait:?}");
        // A bulk load pauses autovacuum on meeting_pages; killed, it leaves it paused, and
        // `health` says so.
        if db.scalar_i64(paused).await == 1 {
            left_paused += 1;
            let health = civicload(&db, None, &["health", "--json"]);
            assert!(
                text(&health).contains("a bulk load paused it"),
                "{}",
                text(&health)
            );
        }
    }
    assert!(left_paused > 0, "no kill left autovacuum paused");
    assert!(
        killed_mid_run >= 5,
        "the load finished too early to test anything ({killed_mid_run} kills landed)"
    );
    let out = civicload(
        &db,
        Some(&server.template),
        &["backfill", "--subdomain", &subs, "--resume"],
    );
    assert!(
        out.status.success(),
        "the final resume failed:\n{}",
        text(&out)
    );
    assert_same_pages(&corpus.expected_pages(), &db.pages().await);
    for j in status_json(&db) {
        assert_eq!(j["status"], "completed", "{j}");
        assert!(!j["verified_at"].is_null(), "{j}");
    }
    // The load that finished resumed autovacuum.
    assert_eq!(db.scalar_i64(paused).await, 0, "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_pauses_gracefully_and_the_same_command_continues() {
    init();
    let corpus = Corpus::cached(30_000, 14, 11, 9);
    let server = Datasette::start(&corpus);
    let db = TestDb::new("sigterm");
    let subs = corpus.subdomains().join(",");
    let child = civicload_command(
        &db,
        Some(&server.template),
        &[
            "backfill",
            "--subdomain",
            &subs,
            "--batch-size",
            "300",
            "--concurrency",
            "2",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_for_pages(&db, 1000).await;
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("Run the same command again"),
        "{}",
        text(&out)
    );
    let jobs = status_json(&db);
    assert!(
        jobs.iter().any(|j| j["status"] == "paused"),
        "some job must be paused: {jobs:?}"
    );
    assert!(
        jobs.iter().all(|j| j["lease_owner"].is_null()),
        "a graceful stop releases every lease"
    );

    let out = civicload(
        &db,
        Some(&server.template),
        &["backfill", "--subdomain", &subs],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_same_pages(&corpus.expected_pages(), &db.pages().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgresql_restart_mid_run_ends_exact() {
    init();
    let corpus = Corpus::cached(30_000, 14, 11, 9);
    let server = Datasette::start(&corpus);
    let pg = PrivatePostgres::start();
    let db = pg.db("t_pg_restart");
    let subs = corpus.subdomains().join(",");
    let child = civicload_command(
        &db,
        Some(&server.template),
        &[
            "backfill",
            "--subdomain",
            &subs,
            "--batch-size",
            "300",
            "--concurrency",
            "2",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_for_pages(&db, 1000).await;
    let before = db.scalar_i64("SELECT count(*) FROM meeting_pages").await;
    pg.restart();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the backfill did not survive the restart:\n{}",
        text(&out)
    );
    assert!(
        before > 0 && (before as usize) < corpus.expected_pages().len(),
        "the restart must land mid-run ({before} pages before it)"
    );
    assert_same_pages(&corpus.expected_pages(), &db.pages().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn three_processes_share_all_municipalities_without_loading_a_job_twice() {
    init();
    let corpus = Corpus::cached(30_000, 14, 11, 9);
    let server = Datasette::start(&corpus);
    let db = TestDb::new("three");
    let sites = corpus.dir.join("sites.csv");
    let out = civicload(
        &db,
        None,
        &["municipalities", "sync", "--from", path_str(&sites)],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "Synced {} municipalities",
            corpus.subdomains().len()
        )),
        "{}",
        text(&out)
    );

    let children: Vec<_> = (0..3)
        .map(|_| {
            civicload_command(
                &db,
                Some(&server.template),
                &["backfill", "--subdomain", "all", "--concurrency", "2"],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let mut fetched_by_all = 0i64;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
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
    assert_same_pages(&corpus.expected_pages(), &db.pages().await);
    for j in status_json(&db) {
        assert_eq!(j["status"], "completed", "{j}");
        assert_eq!(
            j["pages_fetched"].as_i64(),
            j["expected_count"].as_i64(),
            "{j}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_held_by_a_dead_worker_elsewhere_is_taken_over_when_its_lease_expires() {
    init();
    let corpus = Corpus::cached(6_000, 5, 12, 0);
    let server = Datasette::start(&corpus);
    let db = TestDb::new("takeover");
    let sub = corpus.largest();
    let out = civicload(
        &db,
        Some(&server.template),
        &[
            "backfill",
            "--subdomain",
            &sub,
            "--document-type",
            "minutes",
            "--batch-size",
            "100",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    // Simulate a worker on another machine that loaded half the table, then died.
    let mut conn = db.connect().await;
    sqlx::query(
        "UPDATE backfill_jobs SET status = 'running', lease_owner = 'otherhost/4242/deadbeef',
            lease_expires_at = now() + interval '4 seconds', heartbeat_at = now(),
            batch_seq = 3, last_cursor = (SELECT source_id FROM meeting_pages ORDER BY source_id OFFSET 299 LIMIT 1)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "DELETE FROM meeting_pages WHERE source_id > (SELECT last_cursor FROM backfill_jobs)",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    let started = Instant::now();
    let out = civicload(
        &db,
        Some(&server.template),
        &[
            "backfill",
            "--subdomain",
            &sub,
            "--document-type",
            "minutes",
            "--resume",
            "--batch-size",
            "100",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("otherhost/4242/deadbeef"),
        "the run must say who holds the job: {}",
        text(&out)
    );
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the lease was not honoured"
    );
    let expected: Pages = corpus
        .expected_pages()
        .into_iter()
        .filter(|(k, _)| k.subdomain == sub && k.document_type == "minutes")
        .collect();
    assert_same_pages(&expected, &db.pages().await);
    let job = &status_json(&db)[0];
    assert_eq!(job["status"], "completed");
    assert_eq!(job["retry_count"], 1, "{job}");
}

/// Waits (bounded) until the load has committed at least `n` pages.
async fn wait_for_pages(db: &TestDb, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let url = db.url.clone();
        let held = async move {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
                .await
                .ok()?;
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM meeting_pages")
                .fetch_one(&mut conn)
                .await
                .ok()
        }
        .await
        .unwrap_or(0);
        if held >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the load did not start within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
