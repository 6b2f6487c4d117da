//! The foundation, as a user checks it: a backfill from a real Datasette 1.0a28 configured
//! like civic.band (default sort `date` descending: the pagination trap) leaves PostgreSQL
//! holding exactly the corpus, page by page; a rerun changes nothing; a re-OCR'd page is
//! updated in place; a municipality the source does not know fails alone, clearly.
// Tests talk to PostgreSQL directly with sqlx (clippy.toml steers the program to stages::store::sql).
#![allow(clippy::disallowed_methods)]

mod support;

use std::process::Command;

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
    let out = Command::new("python3")
        .arg(repo_root().join("fixtures/mutate.py"))
        .arg(&corpus.dir)
        .args([
            "--subdomain",
            &victim,
            "--reocr",
            "7",
            "--add",
            "12",
            "--seed",
            "3",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

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
