//! The foundation, as a user checks it: a backfill from a real Datasette 1.0a28 configured
//! like civic.band (default sort `date` descending: the pagination trap) leaves PostgreSQL
//! holding exactly the corpus, page by page; a rerun changes nothing; a re-OCR'd page is
//! updated in place; a municipality the source does not know fails alone, clearly.
// Tests talk to PostgreSQL directly with sqlx (clippy.toml steers the program to stages::store::sql).
#![allow(clippy::disallowed_methods)]

mod support;

use sqlx::Connection;

use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn backfill_mirrors_the_corpus_exactly_and_a_rerun_changes_nothing() {
    init();
    let corpus = Corpus::cached(30_000, 14, 11, 9);
    let server = Datasette::start(&corpus);
    let db = TestDb::new("exact");
    let subs = corpus.subdomains().join(",");

    let out = civicload(
        &db,
        Some(&server.template),
        &["backfill", "--subdomain", &subs, "--concurrency", "3"],
    );
    assert!(
        out.status.success(),
        "first backfill failed:\n{}",
        text(&out)
    );
    let expected = corpus.expected_pages();
    assert_same_pages(&expected, &db.pages().await);

    // Every bad row is a recorded reject; nothing else is.
    let summary = corpus.summary();
    let total_rows = summary["totals"]["rows"].as_i64().unwrap();
    let rejects = db.scalar_i64("SELECT count(*) FROM page_rejects").await;
    assert_eq!(
        rejects + expected.len() as i64,
        total_rows,
        "pages + rejects must account for every source row"
    );
    let jobs = status_json(&db);
    assert_eq!(jobs.len(), 2 * corpus.subdomains().len());
    for j in &jobs {
        assert_eq!(j["status"], "completed", "{j}");
        assert!(!j["verified_at"].is_null(), "job not verified: {j}");
        assert_eq!(
            j["expected_count"].as_i64().unwrap(),
            j["actual_count"].as_i64().unwrap() + j["pages_rejected"].as_i64().unwrap(),
            "{j}"
        );
    }
    assert_eq!(sum_field(&jobs, "pages_created"), expected.len() as i64);
    let digest = civicload(&db, None, &["digest"]);

    let out = civicload(
        &db,
        Some(&server.template),
        &["backfill", "--subdomain", &subs],
    );
    assert!(out.status.success(), "rerun failed:\n{}", text(&out));
    let jobs = status_json(&db);
    assert_eq!(
        sum_field(&jobs, "pages_created"),
        0,
        "a rerun must create nothing"
    );
    assert_eq!(
        sum_field(&jobs, "pages_updated"),
        0,
        "a rerun must update nothing"
    );
    assert_eq!(sum_field(&jobs, "pages_unchanged"), expected.len() as i64);
    assert_eq!(
        civicload(&db, None, &["digest"]).stdout,
        digest.stdout,
        "the digest must not change"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM page_rejects").await,
        rejects,
        "rejects are recorded once"
    );

    // A pass stopped half-way over pages that are all stored (a rerun killed mid-job):
    // the resume starts on the insert route (the rows after a checkpoint are normally new),
    // meets a stored page, and must finish with upserts, changing nothing.
    let mut conn = db.connect().await;
    let paused = sqlx::query(
        "UPDATE backfill_jobs j SET status = 'paused', lease_owner = NULL,
                last_cursor = (SELECT min(p.source_id) FROM meeting_pages p
                               JOIN meeting_documents d ON d.id = p.document_id
                               WHERE d.municipality_id = j.municipality_id
                                 AND d.document_type = j.document_type)
         WHERE EXISTS (SELECT 1 FROM meeting_documents d
                       WHERE d.municipality_id = j.municipality_id
                         AND d.document_type = j.document_type)",
    )
    .execute(&mut conn)
    .await
    .unwrap()
    .rows_affected();
    assert!(paused > 0);
    let out = civicload_command(
        &db,
        Some(&server.template),
        &["backfill", "--subdomain", &subs, "--resume"],
    )
    .env("RUST_LOG", "info")
    .output()
    .unwrap();
    assert!(out.status.success(), "resume failed:\n{}", text(&out));
    assert!(
        text(&out).contains("continues with upserts"),
        "the insert route must meet the stored pages:\n{}",
        text(&out)
    );
    let jobs = status_json(&db);
    assert_eq!(sum_field(&jobs, "pages_created"), 0, "{jobs:?}");
    assert_eq!(sum_field(&jobs, "pages_updated"), 0, "{jobs:?}");
    assert_same_pages(&expected, &db.pages().await);
    assert_eq!(
        civicload(&db, None, &["digest"]).stdout,
        digest.stdout,
        "the digest must not change"
    );
    for j in &jobs {
        assert_eq!(j["status"], "completed", "{j}");
        assert!(!j["verified_at"].is_null(), "job not verified: {j}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reocrd_page_is_updated_in_place_and_new_pages_arrive() {
    init();
    let corpus = Corpus::cached(6_000, 5, 12, 0).copy("reocr");
    let server = Datasette::start(&corpus);
    let db = TestDb::new("reocr");
    let subs = corpus.subdomains().join(",");
    let out = civicload(
        &db,
        Some(&server.template),
        &["backfill", "--subdomain", &subs],
    );
    assert!(out.status.success(), "{}", text(&out));
    let identity = "SELECT count(*) FROM meeting_pages";
    let held_before = db.scalar_i64(identity).await;
    let max_id = db.scalar_i64("SELECT max(id) FROM meeting_pages").await;
    let rows_of = |max: i64| {
        format!("SELECT ('x' || left(md5(string_agg(id || ':' || document_id || ':' || page_number, ',' ORDER BY id)), 15))::bit(60)::bigint FROM meeting_pages WHERE id <= {max}")
    };
    let identity_before = db.scalar_i64(&rows_of(max_id)).await;

    let victim = corpus.largest();
    corpus.mutate(&victim, 7, 0, 12, 3);

    let out = civicload(
        &db,
        Some(&server.template),
        &["backfill", "--subdomain", &subs],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_same_pages(&corpus.expected_pages(), &db.pages().await);
    let jobs = status_json(&db);
    assert_eq!(
        sum_field(&jobs, "pages_updated"),
        7,
        "each re-OCR'd page updates its row"
    );
    assert_eq!(sum_field(&jobs, "pages_created"), 12);
    // Updated in place: every earlier row keeps its id, document and page number.
    assert_eq!(db.scalar_i64(identity).await, held_before + 12);
    assert_eq!(
        db.scalar_i64(&rows_of(max_id)).await,
        identity_before,
        "re-OCR'd pages keep their rows"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_municipality_fails_alone_with_a_clear_message() {
    init();
    let corpus = Corpus::cached(6_000, 5, 12, 0);
    let server = Datasette::start(&corpus);
    let db = TestDb::new("unknown");
    let good = corpus.subdomains()[0].clone();
    let out = civicload(
        &db,
        Some(&server.template),
        &[
            "backfill",
            "--subdomain",
            &format!("nowhere.zz,{good}"),
            "--max-retries",
            "1",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("nowhere.zz"), "{all}");
    assert!(all.contains("redirected to another host"), "{all}");
    let jobs = status_json(&db);
    for j in &jobs {
        let expect = if j["subdomain"] == "nowhere.zz" {
            "failed"
        } else {
            "completed"
        };
        assert_eq!(j["status"], expect, "{j}");
    }
    let held: i64 = db.scalar_i64(&format!("SELECT count(*) FROM meeting_pages p JOIN municipalities m ON m.id = p.municipality_id WHERE m.subdomain = '{good}'")).await;
    assert_eq!(
        held,
        corpus.summary()["municipalities"][&good]["pages"]
            .as_i64()
            .unwrap()
    );
}

#[test]
fn usage_errors_exit_2() {
    let db = TestDb::new("usage");
    let out = civicload(
        &db,
        Some("http://127.0.0.1:9/no-placeholders.json"),
        &["backfill", "--subdomain", "a.ca"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("{subdomain}"), "{}", text(&out));
}

/// A database that fails while the jobs are planned is not a usage error: exit 1, with
/// the database's own message once, and no ANSI colour codes in a log that is not a
/// terminal. A subdomain that is not one stays a usage error (exit 2).
#[tokio::test(flavor = "multi_thread")]
async fn a_database_failure_while_planning_exits_1_and_a_bad_subdomain_2() {
    let db = TestDb::new("planfail");
    let template = "http://127.0.0.1:9/{subdomain}/{table}.json";
    assert!(civicload(&db, Some(template), &["migrate"])
        .status
        .success());
    let bad = civicload(&db, Some(template), &["backfill", "--subdomain", "a b.ca"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(
        text(&bad).contains("is not a municipality subdomain"),
        "{}",
        text(&bad)
    );

    let mut conn = db.connect().await;
    sqlx::query("ALTER TABLE backfill_jobs RENAME TO backfill_jobs_gone")
        .execute(&mut conn)
        .await
        .unwrap();
    for command in [
        &["backfill", "--subdomain", "a.ca", "--server-vectors"][..],
        &["verify", "--subdomain", "a.ca"][..],
    ] {
        let out = civicload(&db, Some(template), command);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{command:?}: {all}");
        assert_eq!(
            all.matches("relation \"backfill_jobs\" does not exist")
                .count(),
            1,
            "{command:?}: {all}"
        );
        assert!(!all.contains('\u{1b}'), "ANSI codes in a pipe: {all}");
    }
}

/// `--log-format json`: every line on stderr is one JSON object; the connection error is in
/// one of them, its cause once.
#[test]
fn logs_are_json_objects_with_log_format_json() {
    let out = civicload_command_at(
        "postgres://127.0.0.1:1/nothing",
        None,
        &["--log-format", "json", "status"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let error = lines
        .iter()
        .find(|l| l["level"] == "ERROR")
        .unwrap_or_else(|| panic!("no ERROR line: {stderr}"));
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("cannot connect to PostgreSQL"),
        "{message}"
    );
    assert_eq!(
        message.matches("Connection refused").count(),
        1,
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sites_table_plans_every_municipality_biggest_first() {
    init();
    let corpus = Corpus::cached(6_000, 5, 12, 0);
    let server = Datasette::start(&corpus);
    let db = TestDb::new("sites");
    // From the sites table served by Datasette, then from the JSON file: same list.
    let url = format!("http://127.0.0.1:{}/sites/sites.json", server.port);
    let out = civicload(&db, None, &["municipalities", "sync", "--from", &url]);
    assert!(out.status.success(), "{}", text(&out));
    let out = civicload(
        &db,
        None,
        &[
            "municipalities",
            "sync",
            "--from",
            path_str(&corpus.dir.join("sites.json")),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("0 new, {} updated", corpus.subdomains().len())),
        "{}",
        text(&out)
    );
    let expected_pages = db
        .scalar_i64("SELECT sum(pages)::bigint FROM municipalities")
        .await;
    assert_eq!(
        expected_pages,
        corpus.summary()["totals"]["rows"].as_i64().unwrap()
    );

    let out = civicload(
        &db,
        Some(&server.template),
        &["backfill", "--subdomain", "all", "--concurrency", "1"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_same_pages(&corpus.expected_pages(), &db.pages().await);
    // The one big-job worker claims the biggest municipality's jobs first (the small-job
    // workers take municipalities of at most 2,000 pages, smallest first, meanwhile).
    let (order, biggest_pages): (Vec<String>, i64) = {
        let mut conn = db.connect().await;
        let order = sqlx::query_scalar("SELECT m.subdomain FROM backfill_jobs j JOIN municipalities m ON m.id = j.municipality_id WHERE m.pages > 2000 ORDER BY j.started_at LIMIT 1").fetch_all(&mut conn).await.unwrap();
        let pages = sqlx::query_scalar("SELECT max(pages)::bigint FROM municipalities")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        (order, pages)
    };
    assert!(biggest_pages > 2000, "the corpus needs a big municipality");
    let biggest = corpus.largest();
    assert_eq!(order, vec![biggest]);
}

/// Counts the rows that fire an ordinary (origin) row trigger on meeting_pages, as the
/// foreign-key triggers are: whether a load ran them shows in `fired`.
const ORIGIN_TRIGGER_PROBE: &str = "
    CREATE TABLE fired (page_id bigint);
    GRANT INSERT, SELECT ON fired TO PUBLIC;
    CREATE FUNCTION note_fired() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN INSERT INTO fired VALUES (NEW.id); RETURN NEW; END $$;
    CREATE TRIGGER note_fired AFTER INSERT ON meeting_pages
        FOR EACH ROW EXECUTE FUNCTION note_fired();";

/// Migrates `db` through `url`, plants the origin-trigger probe, and backfills `subs`.
async fn load_with_trigger_probe(
    db: &TestDb,
    url: &str,
    template: &str,
    subs: &str,
) -> std::process::Output {
    let run = |args: &[&str]| {
        civicload_command_at(url, Some(template), args)
            .output()
            .unwrap()
    };
    let out = run(&["migrate"]);
    assert!(out.status.success(), "{}", text(&out));
    sqlx::raw_sql(ORIGIN_TRIGGER_PROBE)
        .execute(&mut db.connect().await)
        .await
        .unwrap();
    let out = run(&["backfill", "--subdomain", subs]);
    assert!(out.status.success(), "backfill failed:\n{}", text(&out));
    out
}

/// What `health` says of the bulk loads' foreign-key checks, for the role of `url`.
fn bulk_foreign_keys_health(url: &str) -> String {
    let out = civicload_command_at(url, None, &["health", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let checks: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    checks
        .iter()
        .find(|c| c["check"] == "bulk loads")
        .map(|c| c["value"].as_str().unwrap().to_string())
        .expect("health reports how bulk loads check foreign keys")
}

/// A bulk load whose role may set session_replication_role COPYs its pages without the
/// per-row foreign-key triggers (an ordinary row trigger stays silent, the search-vector
/// trigger still fires) and checks every reference once after the load; a role that may
/// not keeps the per-row checks. Both hold exactly the corpus. A page whose document is
/// gone is caught by that check, which names it and fails the run.
#[tokio::test(flavor = "multi_thread")]
async fn bulk_loads_check_foreign_keys_once_and_catch_a_dangling_page() {
    init();
    let corpus = Corpus::cached(6_000, 5, 12, 0);
    let server = Datasette::start(&corpus);
    let subs = corpus.subdomains().join(",");
    let expected = corpus.expected_pages();

    // A superuser (the test's own role): no per-row triggers but the vector trigger.
    let db = TestDb::new("fk_super");
    let out = load_with_trigger_probe(&db, &db.url, &server.template, &subs).await;
    let mut conn = db.connect().await;
    assert!(
        text(&out).contains("foreign keys of meeting_pages checked"),
        "a bulk load checks the references after the load:\n{}",
        text(&out)
    );
    assert_same_pages(&expected, &db.pages().await);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM fired").await,
        0,
        "the COPY of a bulk load by a superuser runs no origin row trigger"
    );
    assert_eq!(
        bulk_foreign_keys_health(&db.url),
        "checked once after the load"
    );
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM meeting_pages
             WHERE search_vector IS DISTINCT FROM civicload_page_vector(text)"
        )
        .await,
        0,
        "every vector is exact"
    );
    // In a replica session the vector trigger (ENABLE ALWAYS) still computes a vector the
    // load leaves NULL.
    let mut tx = conn.begin().await.unwrap();
    sqlx::raw_sql(
        "SET LOCAL session_replication_role = replica;
         SET LOCAL civicload.vectors_supplied = 'on';
         INSERT INTO meeting_pages (document_id, municipality_id, source_id, page_number, text)
         SELECT document_id, municipality_id, 'probe', 100000, 'Café Zoning' FROM meeting_pages LIMIT 1",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    let vector: String = sqlx::query_scalar(
        "SELECT search_vector::text FROM meeting_pages WHERE source_id = 'probe'",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(vector, "'cafe':1 'zoning':2");
    tx.rollback().await.unwrap();

    // A page whose document does not exist (written unchecked, as a replica session
    // could): the check after the next bulk load names it and fails the run.
    let first = corpus.subdomains()[0].clone();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET session_replication_role = replica;
         INSERT INTO meeting_pages (document_id, municipality_id, source_id, page_number, text)
         SELECT (SELECT max(id) + 1000 FROM meeting_documents), id, 'dangling', 1, 'orphan'
         FROM municipalities WHERE subdomain = '{first}';
         RESET session_replication_role;"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let out = civicload(
        &db,
        Some(&server.template),
        &["backfill", "--subdomain", &first, "--bulk"],
    );
    assert!(
        !out.status.success(),
        "a dangling page must fail the run:\n{}",
        text(&out)
    );
    assert!(
        text(&out).contains(&format!("1 pages in meeting_pages reference a meeting document or municipality that does not exist ({first} document")),
        "the error names the dangling page:\n{}",
        text(&out)
    );
    drop(conn);
    drop(db);

    // A role that may not set session_replication_role: the per-row checks stay on.
    let role = format!("civicload_plain_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect("postgres:///postgres?host=/var/run/postgresql")
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} NOLOGIN CREATEDB; GRANT {role} TO current_user;"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    {
        let db = TestDb::new("fk_plain");
        // Connected as the test's own user, acting as the plain role for the whole session.
        let url = format!("{}&options=-c%20role%3D{role}", db.url);
        load_with_trigger_probe(&db, &url, &server.template, &subs).await;
        assert_same_pages(&expected, &db.pages().await);
        assert_eq!(
            db.scalar_i64("SELECT count(*) FROM fired").await,
            expected.len() as i64,
            "without the privilege every page runs the row triggers"
        );
        assert_eq!(bulk_foreign_keys_health(&url), "checked row by row");
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {role}")))
        .execute(&mut admin)
        .await
        .unwrap();
}
