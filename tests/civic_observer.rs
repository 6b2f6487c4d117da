//! `--target civic-observer`: civicload loads straight into civic-observer's own Django
//! tables (G1 and G2, created from tests/fixtures/civic_observer_*.sql and owned by a
//! non-superuser role that civicload connects as), exactly, once, resumably and verified;
//! re-OCR'd pages carry users' notebook entries along, pages gone upstream that entries
//! reference are kept and reported, and rows the application's columns cannot hold are
//! rejects with reasons.
// Tests talk to PostgreSQL directly with sqlx (clippy.toml steers the program to stages::store::sql).
#![allow(clippy::disallowed_methods)]

mod support;

use std::process::Command;

use support::observer::{as_observer, Gen, ObserverDb};
use support::*;

/// Tables in `public` that are not the application's: must stay empty.
const FOREIGN_TABLES: &str = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'
    AND tablename NOT IN ('municipalities_muni', 'meetings_meetingdocument', 'meetings_meetingpage',
                          'notebooks_notebook', 'notebooks_notebookentry', 'meetings_backfilljob',
                          'meetings_backfillprogress')";

fn sync_and_backfill(odb: &ObserverDb, corpus: &Corpus, template: &str) {
    let sites = corpus.dir.join("sites.csv");
    let out = odb.civicload(
        None,
        &["municipalities", "sync", "--from", path_str(&sites)],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = odb.civicload(Some(template), &["backfill", "--subdomain", "all"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// (max created, max modified, rows) of pages, documents and municipalities: a rerun that
/// writes nothing leaves them all as they are.
async fn write_marks(odb: &ObserverDb) -> Vec<String> {
    let mut conn = odb.connect().await;
    let mut marks = Vec::new();
    for t in [
        "meetings_meetingpage",
        "meetings_meetingdocument",
        "municipalities_muni",
    ] {
        let sql = format!("SELECT concat_ws(' ', count(*), max(created), max(modified), sum(hashtext(created::text || modified::text))) FROM {t}");
        marks.push(
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&mut conn)
                .await
                .unwrap(),
        );
    }
    marks
}

async fn assert_jobs_mirrored(odb: &ObserverDb, corpus: &Corpus) {
    let jobs = 2 * corpus.subdomains().len() as i64;
    let done = odb
        .scalar_i64(
            "SELECT count(*) FROM meetings_backfilljob b JOIN municipalities_muni m ON m.id = b.municipality_id
             WHERE b.status = 'completed' AND b.verified_at IS NOT NULL AND b.expected_count = b.actual_count
               AND b.pages_fetched = b.expected_count",
        )
        .await;
    assert_eq!(
        done, jobs,
        "every job completed and verified in meetings_backfilljob"
    );
    let rows = odb
        .scalar_i64("SELECT count(*) FROM meetings_backfilljob")
        .await;
    assert_eq!(rows, jobs, "one row per (municipality, document type)");
    let unindexed = odb
        .scalar_i64("SELECT count(*) FROM municipalities_muni WHERE last_indexed IS NULL")
        .await;
    assert_eq!(unindexed, 0, "last_indexed is set once all jobs verified");
}

#[tokio::test(flavor = "multi_thread")]
async fn g1_load_is_exact_with_the_applications_vectors_and_a_rerun_writes_nothing() {
    init();
    let corpus = Corpus::cached(3_000, 3, 41, 0);
    let server = Datasette::start(&corpus);
    let odb = ObserverDb::new("cog1", Gen::G1);
    // Count the application's PL/pgSQL calls: the load must not pay its trigger per page.
    let mut conn = odb.connect().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{}\" SET track_functions = 'pl'",
        odb.db.name
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    sync_and_backfill(&odb, &corpus, &server.template);
    let calls = odb
        .scalar_i64(
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_user_functions
             WHERE funcname = 'meetings_meetingpage_search_vector_update'",
        )
        .await;
    assert_eq!(
        calls, 0,
        "the application's page trigger ran during the load"
    );

    assert_same_pages(&as_observer(&corpus.expected_pages()), &odb.pages().await);
    // Exactly the application's expressions.
    let wrong = odb
        .scalar_i64(
            "SELECT count(*) FROM meetings_meetingpage
             WHERE search_vector IS DISTINCT FROM to_tsvector('simple', unaccent(coalesce(text, '')))",
        )
        .await;
    assert_eq!(
        wrong, 0,
        "page vectors differ from the application's expression"
    );
    let wrong_names = odb
        .scalar_i64(
            "SELECT count(*) FROM meetings_meetingdocument
             WHERE meeting_name_search_vector IS DISTINCT FROM to_tsvector('simple', unaccent(
                regexp_replace(regexp_replace(meeting_name, '([a-z0-9])([A-Z])', '\\1 \\2', 'g'),
                               '([A-Z])([A-Z][a-z])', '\\1 \\2', 'g')))",
        )
        .await;
    assert_eq!(
        wrong_names, 0,
        "name vectors differ from the application's expression"
    );
    // The application's trigger is there and enabled, exactly as before.
    let triggers = odb
        .scalar_i64(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'meetings_meetingpage'::regclass
             AND tgname = 'meetings_meetingpage_search_vector_trigger' AND tgenabled = 'O'",
        )
        .await;
    assert_eq!(triggers, 1);
    assert_eq!(
        odb.scalar_i64(FOREIGN_TABLES).await,
        0,
        "civicload tables among the application's"
    );
    assert_jobs_mirrored(&odb, &corpus).await;

    let before = write_marks(&odb).await;
    let tuples = odb
        .scalar_i64("SELECT n_tup_upd + n_tup_ins + n_tup_del FROM pg_stat_user_tables WHERE relname = 'meetings_meetingpage'")
        .await;
    sync_and_backfill(&odb, &corpus, &server.template);
    assert_eq!(
        write_marks(&odb).await,
        before,
        "a rerun changed created/modified"
    );
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let after = odb
        .scalar_i64("SELECT n_tup_upd + n_tup_ins + n_tup_del FROM pg_stat_user_tables WHERE relname = 'meetings_meetingpage'")
        .await;
    assert_eq!(after, tuples, "a rerun wrote pages");
    let out = odb.civicload(None, &["digest"]);
    assert!(out.status.success(), "{}", text(&out));
    let expected = corpus.expected_pages().len();
    assert!(
        text(&out).starts_with(&format!("{expected} pages, digest ")),
        "{}",
        text(&out)
    );
    // Upkeep as the application's role: the GIN index is there (health), maintain keeps
    // it, and the application's search uses it.
    let out = odb.civicload(None, &["maintain"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !text(&out).contains("Built the missing index"),
        "{}",
        text(&out)
    );
    let out = odb.civicload(None, &["health", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        checks
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["check"] == "search index"
                && c["object"] == "meetings_meetingpage_search_vector_idx"
                && c["verdict"] == "good"),
        "{checks}"
    );
    let out = odb.civicload(None, &["search-bench", "--query", "council", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn g2_load_fills_the_denormalised_columns_and_follows_a_renamed_municipality() {
    init();
    let corpus = Corpus::cached(3_000, 3, 42, 0).copy("cog2");
    let server = Datasette::start(&corpus);
    let odb = ObserverDb::new("cog2", Gen::G2);
    sync_and_backfill(&odb, &corpus, &server.template);
    assert_same_pages(&as_observer(&corpus.expected_pages()), &odb.pages().await);
    let denormalised = "SELECT count(*) FROM meetings_meetingpage p
         JOIN meetings_meetingdocument d ON d.id = p.document_id
         JOIN municipalities_muni m ON m.id = d.municipality_id
         WHERE (p.municipality_id, p.municipality_subdomain, p.municipality_name, p.state,
                p.meeting_name, p.meeting_date, p.document_type, p.legacy_id, p.content_hash)
               IS DISTINCT FROM (m.id, m.subdomain::text, m.name::text, m.state::text,
                d.meeting_name::text, d.meeting_date, d.document_type::text, NULL, NULL)";
    assert_eq!(odb.scalar_i64(denormalised).await, 0);
    assert_eq!(odb.scalar_i64(FOREIGN_TABLES).await, 0);
    assert_jobs_mirrored(&odb, &corpus).await;
    let out = odb.civicload(None, &["health"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("no BM25 index exists"),
        "{}",
        text(&out)
    );

    // civic.band renames a municipality and moves it to another state.
    let renamed = corpus.largest();
    let path = corpus.dir.join("sites.json");
    let mut sites: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for site in sites.as_array_mut().unwrap() {
        if site["subdomain"] == renamed.as_str() {
            site["name"] = "Renamed Town".into();
            site["state"] = "ZZ".into();
        }
    }
    std::fs::write(&path, serde_json::to_string(&sites).unwrap()).unwrap();
    let out = odb.civicload(None, &["municipalities", "sync", "--from", path_str(&path)]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        odb.scalar_i64(denormalised).await,
        0,
        "pages follow the rename"
    );
    let renamed_pages = odb
        .scalar_i64("SELECT count(*) FROM meetings_meetingpage WHERE municipality_name = 'Renamed Town' AND state = 'ZZ'")
        .await;
    let pages_of_renamed = corpus
        .expected_pages()
        .keys()
        .filter(|k| k.subdomain == renamed)
        .count();
    assert_eq!(renamed_pages, pages_of_renamed as i64);
}

/// Sums the two numbers that follow `before` and `between` on each line that has them
/// (per-job report lines).
fn sum_pairs(report: &str, before: &str, between: &str) -> (i64, i64) {
    let number = |s: &str| -> i64 {
        s.split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    report
        .lines()
        .filter_map(|l| l.split(before).nth(1))
        .filter_map(|rest| rest.split_once(between))
        .map(|(a, b)| (number(a), number(b)))
        .fold((0, 0), |acc, x| (acc.0 + x.0, acc.1 + x.1))
}

fn mutate(corpus: &Corpus, sub: &str, reocr: u32, delete: u32) -> serde_json::Value {
    mutate_adding(corpus, sub, reocr, delete, 0)
}

/// Changes one municipality upstream (fixtures/mutate.py); returns the mutation's log.
fn mutate_adding(
    corpus: &Corpus,
    sub: &str,
    reocr: u32,
    delete: u32,
    add: u32,
) -> serde_json::Value {
    corpus.mutate(sub, reocr, delete, add, 5);
    corpus.summary()["mutations"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn repair_carries_notebook_entries_to_reocrd_pages_and_keeps_deleted_referenced_pages() {
    init();
    let corpus = Corpus::cached(3_000, 3, 43, 0).copy("conb");
    let server = Datasette::start(&corpus);
    let odb = ObserverDb::new("conb", Gen::G1);
    sync_and_backfill(&odb, &corpus, &server.template);
    let victim = corpus.largest();
    let log = mutate(&corpus, &victim, 3, 3);
    let reocr: Vec<(String, String)> = log["reocr"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["old_id"].as_str().unwrap().into(),
                r["new_id"].as_str().unwrap().into(),
            )
        })
        .collect();
    let deleted: Vec<String> = log["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().into())
        .collect();
    // Users saved the pages before civic.band changed them: two notebooks hold the first
    // re-OCR'd page, one the others; the first two deleted pages are saved, the third not.
    let mut conn = odb.connect().await;
    sqlx::query(
        "INSERT INTO notebooks_notebook (id, created, modified, name) VALUES
            ('00000000-0000-0000-0000-00000000000a', now(), now(), 'budget'),
            ('00000000-0000-0000-0000-00000000000b', now(), now(), 'zoning')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let mut entries = [
        ("a", reocr[0].0.clone(), "note a0"),
        ("b", reocr[0].0.clone(), "note b0"),
        ("a", reocr[1].0.clone(), "note a1"),
        ("a", reocr[2].0.clone(), ""),
        ("a", deleted[0].clone(), "keep me"),
        ("b", deleted[0].clone(), "me too"),
        ("b", deleted[1].clone(), "and me"),
    ];
    for (i, (nb, page, note)) in entries.iter().enumerate() {
        sqlx::query(
            "INSERT INTO notebooks_notebookentry (id, created, modified, notebook_id, meeting_page_id, note)
             VALUES ($1::uuid, now(), now(), $2::uuid, $3, $4)",
        )
        .bind(format!("00000000-0000-0000-0001-{i:012}"))
        .bind(format!("00000000-0000-0000-0000-00000000000{nb}"))
        .bind(page)
        .bind(note)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let created_before: String =
        sqlx::query_scalar("SELECT created::text FROM meetings_meetingpage WHERE id = $1")
            .bind(&reocr[0].0)
            .fetch_one(&mut conn)
            .await
            .unwrap();

    let out = odb.civicload(
        Some(&server.template),
        &["verify", "--subdomain", &victim, "--repair"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert_eq!(
        sum_pairs(&said, "repair: kept ", " pages gone upstream because "),
        (2, 3),
        "{said}"
    );
    // Every entry is still there; re-OCR'd pages' entries point at the new ids.
    for e in entries.iter_mut() {
        if let Some((_, new)) = reocr.iter().find(|(old, _)| *old == e.1) {
            e.1 = new.clone();
        }
    }
    let held: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT right(notebook_id::text, 1), meeting_page_id::text, note FROM notebooks_notebookentry
         ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let want: Vec<(String, String, String)> = entries
        .iter()
        .map(|(nb, p, n)| (nb.to_string(), p.clone(), n.to_string()))
        .collect();
    assert_eq!(held, want);
    // The re-OCR'd page kept its `created` (it did not newly arrive), with the new text.
    let created_after: String =
        sqlx::query_scalar("SELECT created::text FROM meetings_meetingpage WHERE id = $1")
            .bind(&reocr[0].1)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(created_after, created_before);
    // Pages = the source's + the two kept; the unreferenced deleted page is gone.
    let mut expected = as_observer(&corpus.expected_pages());
    let held_pages = odb.pages().await;
    let kept: Vec<_> = held_pages
        .iter()
        .filter(|(k, v)| !expected.contains_key(*k) && deleted[..2].contains(&v.source_id))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(kept.len(), 2, "the referenced deleted pages are kept");
    expected.extend(kept);
    assert_same_pages(&expected, &held_pages);

    // verify and status report the kept pages with their entries, and verification is exact.
    let out = odb.civicload(
        Some(&server.template),
        &["verify", "--subdomain", &victim, "--deep"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert_eq!(
        sum_pairs(&said, "of those, ", " kept for "),
        (2, 3),
        "{said}"
    );
    let out = odb.civicload(None, &["status"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out)
            .contains("2 pages gone upstream are kept because 3 notebook entries reference them"),
        "{}",
        text(&out)
    );
    assert_eq!(odb.scalar_i64(FOREIGN_TABLES).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_ids_and_overlong_values_are_rejects_with_reasons_and_the_jobs_verify() {
    init();
    let corpus = Corpus::cached(2_000, 2, 44, 0).copy("corej");
    let subs = corpus.subdomains();
    // A row of the second municipality repeated in the first (same id), a meeting name of
    // 300 characters and a page image of 600, as civic.band could serve them.
    let script = format!(
        "import sqlite3, sys
a = sqlite3.connect(sys.argv[1] + '/dbs/{a}.db'); b = sqlite3.connect(sys.argv[1] + '/dbs/{b}.db')
row = b.execute('SELECT id, meeting, date, page, text, page_image FROM minutes ORDER BY id LIMIT 1').fetchone()
cols = [r[1] for r in a.execute('PRAGMA table_info(minutes)')]
def put(values):
    v = values + [None] * (len(cols) - len(values))
    a.execute('INSERT INTO minutes VALUES (%s)' % ','.join('?' * len(cols)), v)
put([row[0], 'SharedMeeting', '2020-01-01', 1, row[4], row[5]])
put(['longname0001', 'L' * 300, '2020-01-02', 1, 'long name', '/x.png'])
put(['longimage001', 'Council', '1999-01-03', 1, 'long image', '/' + 'i' * 600])
a.commit()
print(row[0])",
        a = subs[0],
        b = subs[1]
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .arg(&corpus.dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let shared = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let server = Datasette::start(&corpus);
    let odb = ObserverDb::new("corej", Gen::G2);
    let out = odb.civicload(
        None,
        &[
            "municipalities",
            "sync",
            "--from",
            path_str(&corpus.dir.join("sites.csv")),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    // The second municipality first, so the first meets the id already held.
    for sub in [&subs[1], &subs[0]] {
        let out = odb.civicload(Some(&server.template), &["backfill", "--subdomain", sub]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let mut conn = odb.connect().await;
    let rejects: Vec<(String, String)> =
        sqlx::query_as("SELECT source_id, reason FROM civicload.page_rejects ORDER BY source_id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let mut want = vec![
        (
            shared.clone(),
            "id_held_by_another_municipality".to_string(),
        ),
        (
            "longimage001".to_string(),
            "page_image_too_long".to_string(),
        ),
        (
            "longname0001".to_string(),
            "meeting_name_too_long".to_string(),
        ),
    ];
    want.sort();
    assert_eq!(rejects, want);
    // Nothing truncated: the other pages are exact, and the jobs verified with the rejects.
    let mut expected = as_observer(&corpus.expected_pages());
    expected.retain(|k, v| {
        !(k.subdomain == subs[0] && (v.source_id == shared || v.source_id.starts_with("long")))
    });
    assert_same_pages(&expected, &odb.pages().await);
    let unverified = odb
        .scalar_i64("SELECT count(*) FROM civicload.backfill_jobs WHERE verified_at IS NULL")
        .await;
    assert_eq!(unverified, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_columns_exit_2_naming_every_one() {
    init();
    let odb = ObserverDb::new("cocol", Gen::G2);
    let out = Command::new("psql")
        .arg(&odb.url)
        .args([
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            "ALTER TABLE meetings_meetingpage DROP COLUMN municipality_name;
             ALTER TABLE notebooks_notebookentry DROP COLUMN note;
             ALTER TABLE meetings_meetingdocument ALTER COLUMN meeting_date TYPE text",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = odb.civicload(None, &["status"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    for name in [
        "meetings_meetingpage.municipality_name",
        "notebooks_notebookentry.note",
        "meetings_meetingdocument.meeting_date",
    ] {
        assert!(said.contains(name), "{name} not named: {said}");
    }
    // Nothing of civicload was created.
    let schemas = odb
        .scalar_i64("SELECT count(*) FROM pg_namespace WHERE nspname = 'civicload'")
        .await;
    assert_eq!(schemas, 0);
}

/// Puts notebook entries (notebook letter, page id, note) in notebooks `a` and `b`.
async fn add_entries(conn: &mut sqlx::PgConnection, entries: &[(&str, String, &str)]) {
    sqlx::query(
        "INSERT INTO notebooks_notebook (id, created, modified, name) VALUES
            ('00000000-0000-0000-0000-00000000000a', now(), now(), 'budget'),
            ('00000000-0000-0000-0000-00000000000b', now(), now(), 'zoning')
         ON CONFLICT DO NOTHING",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    for (i, (nb, page, note)) in entries.iter().enumerate() {
        sqlx::query(
            "INSERT INTO notebooks_notebookentry (id, created, modified, notebook_id, meeting_page_id, note)
             VALUES ($1::uuid, now(), now(), $2::uuid, $3, $4)",
        )
        .bind(format!("00000000-0000-0000-0002-{i:012}"))
        .bind(format!("00000000-0000-0000-0000-00000000000{nb}"))
        .bind(page)
        .bind(note)
        .execute(&mut *conn)
        .await
        .unwrap();
    }
}

/// (old id, new id) of the re-OCRs and the ids deleted in a mutation's log.
fn reocrs_and_deletions(log: &serde_json::Value) -> (Vec<(String, String)>, Vec<String>) {
    let s = |v: &serde_json::Value| v.as_str().unwrap().to_string();
    let reocr = log["reocr"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (s(&r["old_id"]), s(&r["new_id"])))
        .collect();
    let deleted = log["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| s(&r["id"]))
        .collect();
    (reocr, deleted)
}

/// id -> created of every page held.
async fn created_by_id(odb: &ObserverDb) -> std::collections::HashMap<String, String> {
    let mut conn = odb.connect().await;
    sqlx::query_as("SELECT id::text, created::text FROM meetings_meetingpage")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_into_g1_follows_upstream_and_keeps_users_notebooks() {
    init();
    let corpus = Corpus::cached(3_000, 3, 45, 0).copy("corf1");
    let server = Datasette::start(&corpus);
    let odb = ObserverDb::new("corf1", Gen::G1);
    sync_and_backfill(&odb, &corpus, &server.template);
    let created_before = created_by_id(&odb).await;
    let victim = corpus.largest();
    let log = mutate_adding(&corpus, &victim, 3, 3, 40);
    let (reocr, deleted) = reocrs_and_deletions(&log);
    let mut conn = odb.connect().await;
    let entries = [
        ("a", reocr[0].0.clone(), "note a0"),
        ("b", reocr[0].0.clone(), "note b0"),
        ("a", reocr[1].0.clone(), "note a1"),
        ("a", deleted[0].clone(), "keep me"),
        ("b", deleted[0].clone(), "me too"),
        ("b", deleted[1].clone(), "and me"),
    ];
    add_entries(&mut conn, &entries).await;
    let started: String = sqlx::query_scalar("SELECT now()::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();

    let out = odb.civicload(Some(&server.template), &["refresh", "--subdomain", "all"]);
    assert!(out.status.success(), "{}", text(&out));

    // Every entry is still there; those of re-OCR'd pages point at the new ids.
    let held: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT right(notebook_id::text, 1), meeting_page_id::text, note FROM notebooks_notebookentry ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let want: Vec<(String, String, String)> = entries
        .iter()
        .map(|(nb, p, n)| {
            let p = reocr.iter().find(|r| r.0 == *p).map_or(p, |r| &r.1);
            (nb.to_string(), p.clone(), n.to_string())
        })
        .collect();
    assert_eq!(held, want);
    // The exact page set: the source's plus the two referenced deleted pages.
    let mut expected = as_observer(&corpus.expected_pages());
    let held_pages = odb.pages().await;
    let kept: Vec<_> = held_pages
        .iter()
        .filter(|(k, v)| !expected.contains_key(*k) && deleted[..2].contains(&v.source_id))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(kept.len(), 2, "the referenced deleted pages are kept");
    expected.extend(kept);
    assert_same_pages(&expected, &held_pages);
    // `created` is untouched on every page that did not newly arrive (a re-OCR'd page
    // keeps its old page's), and new pages have theirs from this refresh.
    let created_after = created_by_id(&odb).await;
    let old_of: std::collections::HashMap<&str, &str> = reocr
        .iter()
        .map(|(o, n)| (n.as_str(), o.as_str()))
        .collect();
    let mut new_pages = 0;
    for (id, created) in &created_after {
        let was = created_before.get(old_of.get(id.as_str()).copied().unwrap_or(id));
        match was {
            Some(was) => assert_eq!(created, was, "created of page {id} changed"),
            None => {
                assert!(*created >= started, "new page {id} created {created}");
                new_pages += 1;
            }
        }
    }
    assert_eq!(new_pages, 40);
    // Vectors are the application's, and its trigger is exactly as before.
    let wrong = odb
        .scalar_i64(
            "SELECT count(*) FROM meetings_meetingpage
             WHERE search_vector IS DISTINCT FROM to_tsvector('simple', unaccent(coalesce(text, '')))",
        )
        .await;
    assert_eq!(wrong, 0);
    let triggers = odb
        .scalar_i64(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'meetings_meetingpage'::regclass
             AND tgname = 'meetings_meetingpage_search_vector_trigger' AND tgenabled = 'O'",
        )
        .await;
    assert_eq!(triggers, 1);
    // The application's job rows: completed and verified by this refresh, and
    // last_indexed set by it.
    let fresh = odb
        .scalar_i64(&format!(
            "SELECT count(*) FROM meetings_backfilljob WHERE status = 'completed'
             AND verified_at >= '{started}' AND actual_count IS NOT NULL AND expected_count IS NOT NULL"
        ))
        .await;
    assert_eq!(fresh, 2 * corpus.subdomains().len() as i64);
    let indexed = odb
        .scalar_i64(&format!(
            "SELECT count(*) FROM municipalities_muni WHERE last_indexed >= '{started}'"
        ))
        .await;
    assert_eq!(indexed, corpus.subdomains().len() as i64);
    assert_eq!(odb.scalar_i64(FOREIGN_TABLES).await, 0);
    // status reports the kept pages; a second refresh writes nothing.
    let out = odb.civicload(None, &["status"]);
    assert!(
        text(&out)
            .contains("2 pages gone upstream are kept because 3 notebook entries reference them"),
        "{}",
        text(&out)
    );
    let before = write_marks(&odb).await;
    let out = odb.civicload(Some(&server.template), &["refresh", "--subdomain", "all"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(write_marks(&odb).await, before, "a second refresh wrote");
}

/// A notebook that holds both a page and its re-OCR'd replacement keeps one entry, on the
/// new page, with both notes (the re-OCR step every load and refresh runs).
#[tokio::test(flavor = "multi_thread")]
async fn a_notebook_holding_both_pages_of_a_reocr_keeps_one_entry_with_both_notes() {
    init();
    let odb = ObserverDb::new("cobth", Gen::G2);
    // civicload installs its functions in its bookkeeping schema at start.
    let out = odb.civicload(None, &["status"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut conn = odb.connect().await;
    sqlx::query("SET search_path = civicload, public")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::raw_sql(
        "INSERT INTO municipalities_muni (id, created, modified, subdomain, name, state, country, kind, pages)
         VALUES ('00000000-0000-0000-0003-000000000001', now(), now(), 'x.ca', 'X', 'CA', 'US', 'city', 2);
         INSERT INTO meetings_meetingdocument (id, created, modified, municipality_id, meeting_name, meeting_date, document_type)
         VALUES ('00000000-0000-0000-0003-000000000002', now(), now(), '00000000-0000-0000-0003-000000000001',
                 'Council', '2024-01-01', 'minutes');
         INSERT INTO meetings_meetingpage (id, created, modified, document_id, page_number, text, page_image,
                 municipality_subdomain, municipality_name, state, meeting_name, document_type)
         SELECT id, now(), now(), '00000000-0000-0000-0003-000000000002', n, 't', '', 'x.ca', 'X', 'CA', 'Council', 'minutes'
         FROM (VALUES ('old1', 1), ('new1', 2), ('old2', 3), ('new2', 4)) AS v(id, n)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let entries = [
        ("a", "old1".to_string(), "old note"),
        ("a", "new1".to_string(), "new note"),
        ("b", "old1".to_string(), "only old"),
        ("a", "old2".to_string(), "same"),
        ("a", "new2".to_string(), "same"),
    ];
    add_entries(&mut conn, &entries).await;
    let pairs = [
        ("old1".to_string(), "new1".to_string()),
        ("old2".to_string(), "new2".to_string()),
    ];
    let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
    let removed = stages::store::observer::pages::replace_reocr(&mut tx, &pairs)
        .await
        .unwrap();
    sqlx::Transaction::commit(tx).await.unwrap();
    assert_eq!(removed, 2);
    let held: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT right(notebook_id::text, 1), meeting_page_id::text, note FROM notebooks_notebookentry
         ORDER BY 1, 2",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let want = [
        ("a", "new1", "new note\n\nold note"),
        ("a", "new2", "same"),
        ("b", "new1", "only old"),
    ];
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(held, want);
}

/// `serve --target civic-observer` (G2): civic.band's webhook renames a municipality that
/// changed upstream; `municipalities_muni` takes the new name, and the queued refresh
/// leaves its pages exact with their denormalised columns following the rename.
#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_into_g2_leaves_the_municipality_exact() {
    use std::time::{Duration, Instant};
    init();
    let corpus = Corpus::cached(2_000, 2, 46, 0).copy("cosrv");
    let server = Datasette::start(&corpus);
    let odb = ObserverDb::new("cosrv", Gen::G2);
    sync_and_backfill(&odb, &corpus, &server.template);
    let victim = corpus.largest();
    mutate_adding(&corpus, &victim, 4, 3, 25);

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let secret = "observer-webhook-secret-5d2e";
    let mut cmd = civicload_command_at(&odb.url, Some(&server.template), &[]);
    cmd.args(["--target", "civic-observer", "serve", "--listen", &listen])
        .env("CIVICLOAD_WEBHOOK_SECRET", secret)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .get(format!("http://{listen}/healthz"))
        .send()
        .await
        .map_or(true, |r| r.status() != 200)
    {
        assert!(Instant::now() < deadline, "serve did not become healthy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = client
        .post(format!("http://{listen}/munis/api/update/{victim}/"))
        .bearer_auth(secret)
        .header("content-type", "application/json")
        .body(serde_json::json!({"name": "Renamed Town", "state": "ZZ", "pages": 1}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The application's municipality follows at once (same transaction as the queue).
    let renamed = odb
        .scalar_i64(&format!(
            "SELECT count(*) FROM municipalities_muni WHERE subdomain = '{victim}'
             AND name = 'Renamed Town' AND state = 'ZZ' AND pages = 1"
        ))
        .await;
    assert_eq!(renamed, 1);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = odb
            .scalar_i64(
                "SELECT count(*) FROM civicload.backfill_jobs
                 WHERE refresh_done < refresh_requested OR lease_owner IS NOT NULL",
            )
            .await;
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the refresh did not happen");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = child.kill();
    let _ = child.wait();

    assert_same_pages(&as_observer(&corpus.expected_pages()), &odb.pages().await);
    let denormalised = "SELECT count(*) FROM meetings_meetingpage p
         JOIN meetings_meetingdocument d ON d.id = p.document_id
         JOIN municipalities_muni m ON m.id = d.municipality_id
         WHERE (p.municipality_id, p.municipality_subdomain, p.municipality_name, p.state,
                p.meeting_name, p.meeting_date, p.document_type)
               IS DISTINCT FROM (m.id, m.subdomain::text, m.name::text, m.state::text,
                d.meeting_name::text, d.meeting_date, d.document_type::text)";
    assert_eq!(odb.scalar_i64(denormalised).await, 0);
    let verified = odb
        .scalar_i64(&format!(
            "SELECT count(*) FROM meetings_backfilljob b JOIN municipalities_muni m ON m.id = b.municipality_id
             WHERE m.subdomain = '{victim}' AND b.status = 'completed' AND b.verified_at IS NOT NULL"
        ))
        .await;
    assert_eq!(verified, 2);
}

/// G1, killed with SIGKILL mid-backfill: while civicload holds a job, the application's
/// job row reads `running` (its own refresh skips the municipality); after the kill, a
/// resume ends with the exact pages, every job completed and verified, and the
/// application's trigger exactly as before (a killed batch's switch rolled back with it).
#[tokio::test(flavor = "multi_thread")]
async fn g1_killed_mid_backfill_resumes_exactly_and_shows_running_jobs_meanwhile() {
    use std::time::{Duration, Instant};
    use support::proxy::{FaultPlan, FaultProxy};
    init();
    let corpus = Corpus::cached(3_000, 3, 47, 0);
    let server = Datasette::start(&corpus);
    let odb = ObserverDb::new("cokill", Gen::G1);
    let out = odb.civicload(
        None,
        &[
            "municipalities",
            "sync",
            "--from",
            path_str(&corpus.dir.join("sites.csv")),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    // Slow answers and small batches, so the kill lands inside the load.
    let upstream: std::net::SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let mut plan = FaultPlan::none();
    plan.slow = 0.5;
    plan.slow_for = Duration::from_millis(200);
    let proxy = FaultProxy::start(upstream, plan).await;
    let template = proxy.template(&server.template, upstream);
    let mut cmd = civicload_command_at(&odb.url, Some(&template), &[]);
    cmd.args([
        "--target",
        "civic-observer",
        "backfill",
        "--subdomain",
        "all",
    ])
    .args(["--batch-size", "100"])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let running = loop {
        // A job row the application reads as running, for a job civicload's lease holds.
        let running = odb
            .scalar_i64(
                "SELECT count(*) FROM meetings_backfilljob b JOIN municipalities_muni o ON o.id = b.municipality_id
                 JOIN civicload.municipalities m ON m.subdomain = o.subdomain
                 JOIN civicload.backfill_jobs j ON j.municipality_id = m.id AND j.document_type = b.document_type
                 WHERE b.status = 'running' AND j.lease_owner IS NOT NULL",
            )
            .await;
        let pages = odb
            .scalar_i64("SELECT count(*) FROM meetings_meetingpage")
            .await;
        if running > 0 && pages > 200 {
            break running;
        }
        assert!(
            Instant::now() < deadline,
            "no job row read running with pages loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(running >= 1);
    let _ = child.kill();
    let _ = child.wait();
    let held = odb
        .scalar_i64("SELECT count(*) FROM meetings_meetingpage")
        .await;
    assert!(
        (held as usize) < corpus.expected_pages().len(),
        "the kill came too late"
    );

    let out = odb.civicload(Some(&server.template), &["backfill", "--subdomain", "all"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_same_pages(&as_observer(&corpus.expected_pages()), &odb.pages().await);
    let wrong = odb
        .scalar_i64(
            "SELECT count(*) FROM meetings_meetingpage
             WHERE search_vector IS DISTINCT FROM to_tsvector('simple', unaccent(coalesce(text, '')))",
        )
        .await;
    assert_eq!(wrong, 0);
    let triggers = odb
        .scalar_i64(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'meetings_meetingpage'::regclass
             AND tgname = 'meetings_meetingpage_search_vector_trigger' AND tgenabled = 'O'",
        )
        .await;
    assert_eq!(triggers, 1);
    let done = odb
        .scalar_i64(
            "SELECT count(*) FROM meetings_backfilljob WHERE status = 'completed' AND verified_at IS NOT NULL",
        )
        .await;
    assert_eq!(done, 2 * corpus.subdomains().len() as i64);
}

/// A spooled G1 backfill's Parquet archive (a file archive) replays into fresh G1 tables,
/// and its run manifest reloads into others: the exact pages, the application's vectors,
/// the job rows completed and verified, and a second replay writes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn an_archive_replays_and_reloads_into_g1_exactly() {
    init();
    let corpus = Corpus::cached(2_000, 2, 48, 0);
    let server = Datasette::start(&corpus);
    let live = ObserverDb::new("coarl", Gen::G1);
    let out = live.civicload(
        None,
        &[
            "municipalities",
            "sync",
            "--from",
            path_str(&corpus.dir.join("sites.csv")),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let tmp = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", tmp.path().join("archive").display());
    let out = live.civicload(
        Some(&server.template),
        &["--spool", &archive, "backfill", "--subdomain", "all"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let manifest = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.strip_prefix("Run manifest: ")
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no run manifest printed: {}", text(&out)));
    drop(server); // from here on the source is gone
    let expected = as_observer(&corpus.expected_pages());
    let vectors_wrong = "SELECT count(*) FROM meetings_meetingpage
         WHERE search_vector IS DISTINCT FROM to_tsvector('simple', unaccent(coalesce(text, '')))";
    let jobs_done = "SELECT count(*) FROM meetings_backfilljob WHERE status = 'completed' AND verified_at IS NOT NULL";
    let jobs = 2 * corpus.subdomains().len() as i64;

    let replayed = ObserverDb::new("corpl", Gen::G1);
    let out = replayed.civicload(None, &["replay", "--from", &archive]);
    assert!(out.status.success(), "{}", text(&out));
    assert_same_pages(&expected, &replayed.pages().await);
    assert_eq!(replayed.scalar_i64(vectors_wrong).await, 0);
    assert_eq!(replayed.scalar_i64(jobs_done).await, jobs);
    assert_eq!(replayed.scalar_i64(FOREIGN_TABLES).await, 0);
    let before = write_marks(&replayed).await;
    let out = replayed.civicload(None, &["replay", "--from", &archive]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        write_marks(&replayed).await,
        before,
        "a second replay wrote"
    );

    let reloaded = ObserverDb::new("corld", Gen::G1);
    let out = reloaded.civicload(None, &["reload", "--manifest", &manifest]);
    assert!(out.status.success(), "{}", text(&out));
    assert_same_pages(&expected, &reloaded.pages().await);
    assert_eq!(reloaded.scalar_i64(vectors_wrong).await, 0);
    assert_eq!(reloaded.scalar_i64(jobs_done).await, jobs);
}
