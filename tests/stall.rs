//! Stalls (issue 18): a backfill that stops making progress anywhere is found, named and
//! recovered from, and a stop during a stall is bounded. The database-side stalls come from
//! a TCP proxy in front of a private PostgreSQL (tests/support/pgproxy.rs), the source-side
//! one from the fault proxy in front of the real Datasette; every test ends by comparing
//! PostgreSQL with the corpus page by page.
//!
//! The stall that was seen: a COPY parked forever, the server waiting for data
//! (`ClientRead`) and civicload idle. Its cause, read in sqlx 0.8's TLS socket and fixed
//! upstream in sqlx 0.9 (launchbadge/sqlx#4251), is a race: when a write found the socket
//! buffer full, rustls also tried a read, and sqlx then waited for the socket to become
//! writable *and then* readable; if it had become writable again in between, sqlx waited
//! for a read that the server, itself waiting for COPY data, never caused. The first test
//! drives a TLS COPY into exactly that state (a peer that stops reading mid-COPY, so the
//! writes block) and requires it to go on without a stall. It passes with sqlx 0.8 too on
//! this machine: the race needs the socket's writable edge to land in a window of a few
//! microseconds, which neither a pausing proxy nor delaying the failed writes made happen
//! on demand. The watchdog tests below are what make a stall of any cause harmless.
// Tests talk to PostgreSQL directly with sqlx (clippy.toml steers the program to stages::store::sql).
#![allow(clippy::disallowed_methods)]

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use support::pgproxy::{PgProxy, Stall, Trigger};
use support::proxy::{FaultPlan, FaultProxy};
use support::*;

/// A private copy of a corpus whose page texts are `times` as long: a batch's COPY is
/// then far bigger than a socket's send buffer can hold (4 MB at most on Linux by
/// default), so a peer that stops reading blocks the writer mid-COPY.
fn with_long_pages(corpus: &Corpus, name: &str, times: usize) -> Corpus {
    let copy = corpus.copy(name);
    let script = format!(
        "import glob, sqlite3\n\
         for f in glob.glob('{}/dbs/*.db'):\n\
         \tc = sqlite3.connect(f)\n\
         \tfor t in ('agendas', 'minutes'):\n\
         \t\ttry: c.execute(\"UPDATE \" + t + \" SET text = \" + \" || char(10) || \".join(['text'] * {times}) + \" WHERE text IS NOT NULL\")\n\
         \t\texcept sqlite3.OperationalError: pass\n\
         \tc.commit()\n",
        copy.dir.display()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    copy
}

/// The private server's address, where the proxy forwards.
fn upstream(pg: &PrivatePostgres) -> std::net::SocketAddr {
    format!("127.0.0.1:{}", pg.port).parse().unwrap()
}

/// A database URL through the proxy, over TCP, TLS required.
fn url_through(proxy: &PgProxy, db: &TestDb, tls: bool) -> String {
    let mode = if tls { "require" } else { "disable" };
    format!(
        "postgres://{}@127.0.0.1:{}/{}?sslmode={mode}",
        whoami(),
        proxy.port,
        db.name
    )
}

/// `civicload backfill` of every municipality of `corpus` into `url`, with `extra` flags.
fn backfill_at(
    url: &str,
    template: &str,
    corpus: &Corpus,
    extra: &[&str],
) -> std::process::Command {
    let subs = corpus.subdomains().join(",");
    let mut args = vec!["backfill", "--subdomain", &subs];
    args.extend_from_slice(extra);
    civicload_command_at(url, Some(template), &args)
}

async fn run(mut cmd: std::process::Command) -> std::process::Output {
    // The proxies run on this runtime: wait for the process off it.
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn assert_all_verified(db: &TestDb) {
    for j in status_json(db) {
        assert_eq!(j["status"], "completed", "{j}");
        assert!(!j["verified_at"].is_null(), "{j}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_copy_whose_peer_stops_reading_for_a_moment_goes_on() {
    init();
    let corpus = with_long_pages(&Corpus::cached(3_000, 1, 18, 0), "longpages", 8);
    let server = Datasette::start(&corpus);
    let pg = PrivatePostgres::start_tls();
    let db = pg.db("tlspause");
    // The proxy stops reading from the first connection that has sent 300 KB (the first
    // COPY) for two seconds: the client's socket buffer fills, as with a busy server.
    let proxy = PgProxy::start(
        upstream(&pg),
        Trigger::Unanswered(1_000_000),
        Stall::Pause(Duration::from_secs(2)),
    )
    .await;
    let url = url_through(&proxy, &db, true);
    let cmd = backfill_at(
        &url,
        &server.template,
        &corpus,
        &["--concurrency", "1", "--stall-timeout", "20"],
    );
    let out = run(cmd).await;
    let log = text(&out);
    assert!(
        proxy.stalled.load(std::sync::atomic::Ordering::SeqCst),
        "the proxy must have paused a COPY: {log}"
    );
    assert!(out.status.success(), "the backfill failed:\n{log}");
    // A pause of the peer is backpressure, not a stall: no batch may be aborted for it.
    assert!(
        !log.contains("stalled") && !log.contains("no progress"),
        "a two-second pause of the peer must not stall a COPY:\n{log}"
    );
    assert_same_pages(&corpus.expected_pages(), &db.pages().await);
    assert_all_verified(&db);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_stall_is_aborted_named_and_retried_exact() {
    init();
    let corpus = Corpus::cached(5_000, 2, 18, 3);
    let server = Datasette::start(&corpus);
    let pg = PrivatePostgres::start_tls();
    let db = pg.db("dbstall");
    // The first connection to send 300 KB (a COPY) is frozen mid-stream, for good.
    let proxy = PgProxy::start(upstream(&pg), Trigger::CopyData(300_000), Stall::Freeze).await;
    let url = url_through(&proxy, &db, false);
    let started = Instant::now();
    let cmd = backfill_at(
        &url,
        &server.template,
        &corpus,
        &["--concurrency", "2", "--stall-timeout", "3"],
    );
    let out = run(cmd).await;
    let log = text(&out);
    assert!(
        proxy.stalled.load(std::sync::atomic::Ordering::SeqCst),
        "{log}"
    );
    assert!(
        out.status.success(),
        "the stalled batch was not recovered:\n{log}"
    );
    // Named: the municipality and table (the job), the batch and the stage it waited in.
    let named = log
        .lines()
        .find(|l| l.contains("stalled in the load stage"))
        .unwrap_or_else(|| panic!("no stall was reported:\n{log}"));
    assert!(
        corpus
            .subdomains()
            .iter()
            .any(|s| named.contains(&format!("{s}/"))),
        "{named}"
    );
    assert!(named.contains("batch "), "{named}");
    assert!(
        named.contains("Retrying the batch from the checkpoint"),
        "{named}"
    );
    assert!(started.elapsed() < Duration::from_secs(120), "{log}");
    assert_same_pages(&corpus.expected_pages(), &db.pages().await);
    assert_all_verified(&db);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_body_that_stalls_is_fetched_again_exact() {
    init();
    let corpus = Corpus::cached(5_000, 2, 18, 3);
    let server = Datasette::start(&corpus);
    let upstream: std::net::SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let plan = FaultPlan {
        server_error: 0.0,
        reset_mid_body: 0.0,
        truncated_body: 0.0,
        too_many_requests: 0.0,
        slow: 0.0,
        stall_once_mid_body: true,
        ..FaultPlan::acceptance(1)
    };
    let proxy = FaultProxy::start(upstream, plan).await;
    let template = proxy.template(&server.template, upstream);
    let db = TestDb::new("srcstall");
    // The request timeout is long: only the watchdog ends the stalled answer early.
    let cmd = backfill_at(
        &db.url,
        &template,
        &corpus,
        &["--http-timeout", "600", "--stall-timeout", "3"],
    );
    let out = run(cmd).await;
    let log = text(&out);
    assert_eq!(
        proxy
            .counts
            .stalled
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "{log}"
    );
    assert!(out.status.success(), "{log}");
    assert!(
        // "for 3 s" on a quiet machine; a loaded one notices a second or two later.
        log.contains("No answer from the source for ")
            && log.contains(" s; sending the request again"),
        "the fetch stall must be reported:\n{log}"
    );
    assert_same_pages(&corpus.expected_pages(), &db.pages().await);
    assert_all_verified(&db);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_stall_exits_within_30_s_and_a_resume_is_exact() {
    init();
    let corpus = Corpus::cached(5_000, 2, 18, 3);
    let server = Datasette::start(&corpus);
    let pg = PrivatePostgres::start_tls();
    let db = pg.db("termstall");
    let proxy = PgProxy::start(upstream(&pg), Trigger::CopyData(300_000), Stall::Freeze).await;
    let url = url_through(&proxy, &db, false);
    // The watchdog would act only after ten minutes: the stop alone must end the process.
    let mut cmd = backfill_at(&url, &server.template, &corpus, &["--stall-timeout", "600"]);
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    proxy.wait_for_stall(Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let signalled = Instant::now();
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let took = signalled.elapsed();
    let log = text(&out);
    assert!(
        took < Duration::from_secs(30),
        "the stop took {took:?}:\n{log}"
    );
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("abandoning them"), "{log}");

    // The frozen connection's session ends when its socket closes (the process is gone;
    // only the proxy kept it open). The resume, straight to the server: exact.
    drop(proxy);
    let out = backfill_at(&db.url, &server.template, &corpus, &["--resume"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_same_pages(&corpus.expected_pages(), &db.pages().await);
    assert_all_verified(&db);
}
