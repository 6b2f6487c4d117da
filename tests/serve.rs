//! `civicload serve` with a real HTTP client: civic.band's webhook leads to the
//! municipality being exact; bad webhooks get the application's 4xx and change nothing;
//! a burst for many municipalities loses none and never refreshes a job twice at once;
//! a `kill -9` right after a 2xx loses nothing; SIGTERM stops cleanly; the secret is in
//! no log and no table.
// Tests talk to PostgreSQL directly with sqlx (clippy.toml steers the program to stages::store::sql).
#![allow(clippy::disallowed_methods)]

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::proxy::{FaultPlan, FaultProxy};
use support::*;

const SECRET: &str = "s3cret-webhook-7f1c2a9e";

struct Serve {
    child: Child,
    base: String,
    log: std::path::PathBuf,
}

impl Serve {
    fn start(db: &TestDb, template: &str, extra: &[&str]) -> Serve {
        let port = free_port();
        let log =
            std::env::temp_dir().join(format!("civicload-serve-{port}-{}.log", std::process::id()));
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["--log-format", "json", "serve", "--listen", &listen];
        args.extend_from_slice(extra);
        let mut cmd = civicload_command(db, Some(template), &args);
        cmd.env("CIVICLOAD_WEBHOOK_SECRET", SECRET)
            .env("RUST_LOG", "info,sqlx=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().unwrap();
        let serve = Serve {
            child,
            base: format!("http://{listen}"),
            log,
        };
        serve.wait_healthy();
        serve
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = curl::get_status(&format!("{}/healthz", self.base)) {
                if r == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("serve did not become healthy: {}", self.logs());
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; the exit status and how long it took.
    fn terminate(&mut self) -> (Option<i32>, Duration) {
        let started = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().unwrap();
        (status.code(), started.elapsed())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_file(&self.log);
    }
}

mod curl {
    //! A tiny blocking GET for polling from sync code.
    pub fn get_status(url: &str) -> Result<u16, String> {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "3",
                url,
            ])
            .output()
            .map_err(|e| e.to_string())?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|e| format!("{e}"))
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn webhook(base: &str, sub: &str, body: Value) -> (u16, Value) {
    let r = http()
        .post(format!("{base}/munis/api/update/{sub}/"))
        .bearer_auth(SECRET)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Waits until no refresh is queued or running for these municipalities.
async fn wait_refreshed(db: &TestDb, subs: &[String], within: Duration) {
    let mut conn = db.connect().await;
    let deadline = Instant::now() + within;
    loop {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM backfill_jobs j JOIN municipalities m ON m.id = j.municipality_id
             WHERE m.subdomain = ANY($1) AND (j.refresh_done < j.refresh_requested OR j.lease_owner IS NOT NULL)",
        )
        .bind(subs)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if pending == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} jobs still queued after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn backfill(db: &TestDb, corpus: &Corpus, template: &str) {
    let subs = corpus.subdomains().join(",");
    let out = civicload(db, Some(template), &["backfill", "--subdomain", &subs]);
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_makes_the_municipality_exact_and_bad_ones_change_nothing() {
    init();
    let corpus = Corpus::cached(4_000, 4, 41, 0).copy("webhook");
    let server = Datasette::start(&corpus);
    let db = TestDb::new("webhook");
    backfill(&db, &corpus, &server.template);
    let victim = corpus.largest();
    corpus.mutate(&victim, 3, 2, 5, 2);

    // Without the secret, serve refuses to start.
    let out = civicload_command(
        &db,
        Some(&server.template),
        &["serve", "--listen", "127.0.0.1:0"],
    )
    .env_remove("CIVICLOAD_WEBHOOK_SECRET")
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("CIVICLOAD_WEBHOOK_SECRET"),
        "{}",
        text(&out)
    );

    let mut serve = Serve::start(&db, &server.template, &["--concurrency", "2"]);
    let url = format!("{}/munis/api/update/{victim}/", serve.base);
    let before = db
        .scalar_i64("SELECT (count(*) + sum(refresh_requested))::bigint FROM backfill_jobs")
        .await;
    let munis = db.scalar_i64("SELECT count(*) FROM municipalities").await;
    let big = "x".repeat(70 * 1024);
    let cases: Vec<(u16, Option<&str>, String, &str)> = vec![
        (
            401,
            None,
            json!({"name": "X"}).to_string(),
            "Invalid webhook secret",
        ),
        (
            401,
            Some("wrong"),
            json!({"name": "X"}).to_string(),
            "Invalid webhook secret",
        ),
        (400, Some(SECRET), "{not json".into(), "Invalid JSON"),
        (
            400,
            Some(SECRET),
            json!({"pages": 3}).to_string(),
            "name field is required",
        ),
        (
            400,
            Some(SECRET),
            json!({"name": big}).to_string(),
            "too large",
        ),
    ];
    for (status, secret, body, message) in &cases {
        let mut req = http()
            .post(&url)
            .body(body.clone())
            .header("content-type", "application/json");
        if let Some(s) = secret {
            req = req.bearer_auth(s);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), *status, "{message}");
        let answer: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert!(
            answer["error"].as_str().unwrap().contains(message),
            "{answer}"
        );
    }
    let (status, answer) = webhook(&serve.base, "not_a.sub!", json!({"name": "X"})).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("Invalid subdomain"))
    );
    let after = db
        .scalar_i64("SELECT (count(*) + sum(refresh_requested))::bigint FROM backfill_jobs")
        .await;
    assert_eq!(
        (before, munis),
        (
            after,
            db.scalar_i64("SELECT count(*) FROM municipalities").await
        )
    );

    // The real one, as civic.band sends it (PUT works as POST).
    let r = http()
        .put(&url)
        .bearer_auth(SECRET)
        .body(json!({"name": "Victim", "state": "CA", "pages": 1234, "last_updated": "2026-12-01", "subdomain": "ignored.ca", "unknown": 1}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let answer: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(answer["action"], "updated");
    assert_eq!(
        (answer["subdomain"].as_str(), answer["pages"].as_i64()),
        (Some(victim.as_str()), Some(1234))
    );
    wait_refreshed(&db, std::slice::from_ref(&victim), Duration::from_secs(30)).await;
    assert_same_pages(&corpus.expected_pages(), &db.pages().await);

    let metrics = http()
        .get(format!("{}/metrics", serve.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "civicload_refresh_queue_depth 0",
        "civicload_jobs{status=\"completed\"}",
        "civicload_pages_total{change=\"created\"}",
        "civicload_source_bytes_total",
        "civicload_source_errors_total{kind=\"server_error\"}",
        "civicload_webhook_to_verified_seconds_count 2",
        "civicload_webhooks_total{code=\"401\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
    let (code, took) = serve.terminate();
    assert_eq!(code, Some(0), "{}", serve.logs());
    assert!(took < Duration::from_secs(30));
    let logs = serve.logs();
    assert!(logs.contains("\"message\""), "JSON logs: {logs}");
    assert!(!logs.contains(SECRET), "the secret is in the logs");
    let dump = Command::new("pg_dump")
        .args([
            "--data-only",
            "-h",
            &db.host,
            "-p",
            &db.port.to_string(),
            &db.name,
        ])
        .output()
        .unwrap();
    assert!(dump.status.success());
    assert!(
        !String::from_utf8_lossy(&dump.stdout).contains(SECRET),
        "the secret is in a table"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_for_twenty_municipalities_loses_none_and_never_runs_a_job_twice_at_once() {
    init();
    let corpus = Corpus::cached(4_000, 20, 43, 0).copy("burst");
    let server = Datasette::start(&corpus);
    let db = TestDb::new("burst");
    backfill(&db, &corpus, &server.template);
    let subs = corpus.subdomains();
    assert_eq!(subs.len(), 20);
    for (i, s) in subs.iter().enumerate() {
        let held = corpus.summary()["municipalities"][s]["pages"]
            .as_i64()
            .unwrap();
        corpus.mutate(s, u32::from(held > 10), 0, 2, i as u32);
    }
    // Two processes share the queue.
    let a = Serve::start(&db, &server.template, &["--concurrency", "3"]);
    let b = Serve::start(&db, &server.template, &["--concurrency", "3"]);
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..200 {
        let base = if i % 2 == 0 {
            a.base.clone()
        } else {
            b.base.clone()
        };
        let sub = subs[i % 20].clone();
        sends.spawn(async move { webhook(&base, &sub, json!({"name": sub})).await.0 });
    }
    while let Some(status) = sends.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    wait_refreshed(&db, &subs, Duration::from_secs(300)).await;
    assert_same_pages(&corpus.expected_pages(), &db.pages().await);
    let mut conn = db.connect().await;
    let requested: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT m.subdomain || '/' || j.document_type, j.refresh_requested, j.refresh_done
         FROM backfill_jobs j JOIN municipalities m ON m.id = j.municipality_id ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(requested.len(), 40);
    assert!(
        requested.iter().all(|r| r.1 == 10 && r.2 == 10),
        "{requested:?}"
    );
    let overlaps: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM refresh_runs a JOIN refresh_runs b
           ON a.job_id = b.job_id AND a.id < b.id
          AND b.started_at < coalesce(a.finished_at, 'infinity') AND a.started_at < coalesce(b.finished_at, 'infinity')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(overlaps, 0, "a job was refreshed twice at once");
    let (runs, jobs_run): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT job_id) FROM refresh_runs WHERE status = 'verified'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(jobs_run, 40, "every job refreshed");
    // Bursts coalesce: 10 webhooks per job became far fewer refreshes.
    assert!(runs < 200, "{runs} refreshes for 400 requests");
    println!("200 webhooks (400 job requests): {runs} refreshes");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_right_after_the_answer_loses_nothing() {
    init();
    let corpus = Corpus::cached(3_000, 3, 45, 0).copy("kill");
    let server = Datasette::start(&corpus);
    let db = TestDb::new("kill");
    backfill(&db, &corpus, &server.template);
    let victim = corpus.largest();
    corpus.mutate(&victim, 2, 1, 4, 8);
    // The first process reads the source through a slow proxy: it cannot finish the
    // refresh before it is killed.
    let upstream: std::net::SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let mut slow = FaultPlan::none();
    slow.slow = 1.0;
    slow.slow_for = Duration::from_secs(5);
    let proxy = FaultProxy::start(upstream, slow).await;
    let mut first = Serve::start(&db, &proxy.template(&server.template, upstream), &[]);
    let (status, _) = webhook(&first.base, &victim, json!({"name": "Victim"})).await;
    assert_eq!(status, 200);
    first.kill9();
    let queued = db
        .scalar_i64("SELECT count(*) FROM backfill_jobs WHERE refresh_done < refresh_requested")
        .await;
    assert_eq!(queued, 2, "the webhook's refreshes are queued and not done");
    let _second = Serve::start(&db, &server.template, &[]);
    wait_refreshed(&db, std::slice::from_ref(&victim), Duration::from_secs(60)).await;
    assert_same_pages(&corpus.expected_pages(), &db.pages().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_schedule_refreshes_only_what_changed() {
    init();
    let corpus = Corpus::cached(3_000, 3, 47, 0).copy("schedule");
    let server = Datasette::start(&corpus);
    let db = TestDb::new("schedule");
    let sites = corpus.dir.join("sites.csv");
    let out = civicload(
        &db,
        None,
        &["municipalities", "sync", "--from", path_str(&sites)],
    );
    assert!(out.status.success(), "{}", text(&out));
    backfill(&db, &corpus, &server.template);
    let victim = corpus.largest();
    corpus.mutate(&victim, 1, 1, 5, 12);
    let _serve = Serve::start(
        &db,
        &server.template,
        &["--refresh-every", "1s", "--sites", path_str(&sites)],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while db
        .scalar_i64("SELECT count(*) FROM refresh_runs WHERE status = 'verified'")
        .await
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the scheduled refresh did not run"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_refreshed(&db, std::slice::from_ref(&victim), Duration::from_secs(30)).await;
    assert_same_pages(&corpus.expected_pages(), &db.pages().await);
    // Two more periods: nothing else changed, nothing else is refreshed.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let others = db
        .scalar_i64(&format!(
            "SELECT count(*) FROM refresh_runs r JOIN backfill_jobs j ON j.id = r.job_id
             JOIN municipalities m ON m.id = j.municipality_id WHERE m.subdomain <> '{victim}'"
        ))
        .await;
    assert_eq!(others, 0);
    assert_eq!(db.scalar_i64("SELECT count(*) FROM refresh_runs").await, 2);
}
