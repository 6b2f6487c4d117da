//! Proof of completeness: exact expected counts for tables beyond Datasette's 10,001-row
//! count cap (by the SQL endpoint, or an id scan where SQL is disabled), verification that
//! fails a short job with the right gap, and `verify --deep` / `--repair` against a
//! source that changed after the load.
// Tests talk to PostgreSQL directly with sqlx (clippy.toml steers the program to stages::store::sql).
#![allow(clippy::disallowed_methods)]

mod support;

use std::process::Command;

use support::*;

fn big_table(corpus: &Corpus) -> (String, String, i64) {
    let summary = corpus.summary();
    let mut best = (String::new(), String::new(), 0);
    for (sub, m) in summary["municipalities"].as_object().unwrap() {
        for (table, t) in m["tables"].as_object().unwrap() {
            let rows = t["rows"].as_i64().unwrap();
            if rows > best.2 {
                best = (sub.clone(), table.clone(), rows);
            }
        }
    }
    assert!(
        best.2 > 10_001,
        "the corpus needs a table above Datasette's count cap: {best:?}"
    );
    best
}

fn doc_type(table: &str) -> &'static str {
    if table == "agendas" {
        "agenda"
    } else {
        "minutes"
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tables_beyond_the_count_cap_get_exact_counts_by_sql_or_by_id_scan() {
    init();
    let corpus = Corpus::cached(60_000, 4, 31, 3);
    let (sub, table, rows) = big_table(&corpus);
    // The same corpus with SQL disabled, as civic.band may configure it.
    let no_sql = corpus.copy("nosql");
    let path = no_sql.dir.join("datasette.yaml");
    // generate.py writes the config as JSON (valid YAML) after '#' comment lines.
    let json: String = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let mut config: serde_json::Value = serde_json::from_str(&json).unwrap();
    config["settings"]["default_allow_sql"] = serde_json::Value::Bool(false);
    let yaml = serde_json::to_string_pretty(&config).unwrap();
    std::fs::write(&path, yaml).unwrap();

    for (c, route) in [(&corpus, "datasette_sql"), (&no_sql, "id_scan")] {
        let server = Datasette::start(c);
        let db = TestDb::new("counts");
        let out = civicload(
            &db,
            Some(&server.template),
            &[
                "backfill",
                "--subdomain",
                &sub,
                "--document-type",
                doc_type(&table),
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
        let jobs = status_json(&db);
        assert_eq!(jobs.len(), 1);
        assert_eq!(
            jobs[0]["expected_count"].as_i64(),
            Some(rows),
            "{}",
            jobs[0]
        );
        assert_eq!(jobs[0]["expected_source"], route, "{}", jobs[0]);
        assert!(!jobs[0]["verified_at"].is_null());
        // The pages held are exactly the expected ones of that table.
        let expected: Pages = c
            .expected_pages()
            .into_iter()
            .filter(|(k, _)| k.subdomain == sub && k.document_type == doc_type(&table))
            .collect();
        assert_same_pages(&expected, &db.pages().await);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_deep_finds_every_difference_and_repair_restores_the_exact_source() {
    init();
    let corpus = Corpus::cached(6_000, 5, 12, 0).copy("deep");
    let server = Datasette::start(&corpus);
    let db = TestDb::new("deep");
    let subs = corpus.subdomains().join(",");
    let out = civicload(
        &db,
        Some(&server.template),
        &["backfill", "--subdomain", &subs],
    );
    assert!(out.status.success(), "{}", text(&out));

    let victim = corpus.largest();
    corpus.mutate(&victim, 5, 4, 6, 9);
    // Three pages lost locally too.
    let mut conn = db.connect().await;
    let lost = sqlx::query("DELETE FROM meeting_pages WHERE id IN (SELECT p.id FROM meeting_pages p JOIN municipalities m ON m.id = p.municipality_id WHERE m.subdomain = $1 ORDER BY p.id DESC LIMIT 3)")
        .bind(&victim)
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(lost.rows_affected(), 3);

    let out = civicload(
        &db,
        Some(&server.template),
        &["verify", "--subdomain", &victim, "--deep"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = text(&out);
    let missing: usize = report
        .lines()
        .filter_map(|l| l.split("missing here ").nth(1))
        .map(|r| {
            r.split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    let stale: usize = report
        .lines()
        .filter_map(|l| l.split("stale here ").nth(1))
        .map(|r| {
            r.split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    // 5 re-OCR'd (new ids) + 6 added + 3 lost locally; 5 old re-OCR ids + 4 deleted.
    assert_eq!((missing, stale), (14, 9), "{report}");

    let out = civicload(
        &db,
        Some(&server.template),
        &["verify", "--subdomain", &victim, "--repair"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_same_pages(&corpus.expected_pages(), &db.pages().await);
    let out = civicload(
        &db,
        Some(&server.template),
        &["verify", "--subdomain", &victim, "--deep"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        text(&out).matches("missing here 0; stale here 0").count(),
        2,
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_job_fails_with_its_gap_and_repair_refuses_mass_deletion_without_force() {
    init();
    let corpus = Corpus::cached(6_000, 5, 12, 0).copy("short");
    let server = Datasette::start(&corpus);
    let db = TestDb::new("short");
    let subs = corpus.subdomains().join(",");
    let out = civicload(
        &db,
        Some(&server.template),
        &["backfill", "--subdomain", &subs],
    );
    assert!(out.status.success(), "{}", text(&out));
    let victim = corpus
        .subdomains()
        .into_iter()
        .max_by_key(|s| {
            corpus.summary()["municipalities"][s]["tables"]["minutes"]["rows"]
                .as_i64()
                .unwrap()
        })
        .unwrap();
    let minutes = corpus.summary()["municipalities"][&victim]["tables"]["minutes"]["rows"]
        .as_i64()
        .unwrap();

    let mut conn = db.connect().await;
    let gone = sqlx::query("DELETE FROM meeting_pages WHERE id IN (SELECT p.id FROM meeting_pages p JOIN meeting_documents d ON d.id = p.document_id JOIN municipalities m ON m.id = d.municipality_id WHERE m.subdomain = $1 AND d.document_type = 'minutes' ORDER BY p.id LIMIT 50)")
        .bind(&victim)
        .execute(&mut conn)
        .await
        .unwrap()
        .rows_affected() as i64;
    let out = civicload(
        &db,
        Some(&server.template),
        &[
            "backfill",
            "--subdomain",
            &victim,
            "--document-type",
            "minutes",
            "--verify-only",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let job = status_json(&db)
        .into_iter()
        .find(|j| j["subdomain"] == victim.as_str() && j["document_type"] == "minutes")
        .unwrap();
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["actual_count"].as_i64(), Some(minutes - gone));
    assert!(
        job["last_error"]
            .as_str()
            .unwrap()
            .contains(&format!("short by {gone}")),
        "{job}"
    );

    // Upstream loses 20% of that table: repair must refuse to delete that much by itself.
    let drop = (minutes / 5).to_string();
    let out = Command::new("python3")
        .arg(repo_root().join("fixtures/mutate.py"))
        .arg(&corpus.dir)
        .args(["--subdomain", &victim, "--delete", &drop, "--seed", "4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = civicload(
        &db,
        Some(&server.template),
        &[
            "verify",
            "--subdomain",
            &victim,
            "--document-type",
            "minutes",
            "--repair",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("--force"), "{}", text(&out));
    let out = civicload(
        &db,
        Some(&server.template),
        &["verify", "--subdomain", &victim, "--repair", "--force"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_same_pages(&corpus.expected_pages(), &db.pages().await);

    // status --json agrees with the database, and --totals reads the refreshed view.
    for j in status_json(&db) {
        let held = db.scalar_i64(&format!("SELECT count(*) FROM meeting_pages p JOIN meeting_documents d ON d.id = p.document_id WHERE p.municipality_id = {} AND d.document_type = '{}'", j["municipality_id"], j["document_type"].as_str().unwrap())).await;
        assert_eq!(j["actual_count"].as_i64(), Some(held), "{j}");
    }
    let out = civicload(&db, None, &["status", "--totals", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let totals: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let pages: i64 = totals.iter().map(|t| t["pages"].as_i64().unwrap()).sum();
    assert_eq!(pages, corpus.expected_pages().len() as i64);
}
