//! civic-observer's database for the tests: a fresh database owned by a fresh non-superuser
//! role (the application's role), its tables created from tests/fixtures/civic_observer_*.sql
//! as that role, and civicload run against it with `--target civic-observer`, connecting
//! as that role over TCP with a password (the local socket only takes peer logins).
#![allow(clippy::disallowed_methods)]

use std::process::{Command, Output};

use sqlx::{PgConnection, Row};

use super::{repo_root, text, PageContent, PageKey, Pages, TestDb};

/// The schema generation a test database is created with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gen {
    G1,
    G2,
}

pub struct ObserverDb {
    pub db: TestDb,
    pub role: String,
    /// The application role's URL (what civicload is given).
    pub url: String,
}

fn psql(db: &str, sql: &str) {
    let (host, port) = super::test_server();
    let out = Command::new("psql")
        .args(["-h", &host, "-p", &port.to_string(), "-d", db])
        .args(["-v", "ON_ERROR_STOP=1", "-qAtc", sql])
        .output()
        .unwrap();
    assert!(out.status.success(), "psql {sql}: {}", text(&out));
}

impl ObserverDb {
    pub fn new(prefix: &str, generation: Gen) -> ObserverDb {
        let db = TestDb::new(prefix);
        let role = format!("app_{}", db.name.trim_start_matches("t_"));
        let password = format!("pw{:016x}", rand::random::<u64>());
        psql(
            "postgres",
            &format!("CREATE ROLE \"{role}\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{password}'"),
        );
        psql(
            "postgres",
            &format!("CREATE DATABASE \"{}\" OWNER \"{role}\"", db.name),
        );
        if generation == Gen::G1 {
            // G1's migrations install unaccent (its trigger calls it).
            psql(&db.name, "CREATE EXTENSION IF NOT EXISTS unaccent");
        }
        let url = format!(
            "postgres://{role}:{password}@127.0.0.1:{}/{}",
            db.port, db.name
        );
        let fixtures = repo_root().join("tests/fixtures");
        let g = match generation {
            Gen::G1 => "civic_observer_g1.sql",
            Gen::G2 => "civic_observer_g2.sql",
        };
        let out = Command::new("psql")
            .arg(&url)
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-1"])
            .arg("-f")
            .arg(fixtures.join("civic_observer_common.sql"))
            .arg("-f")
            .arg(fixtures.join(g))
            .output()
            .unwrap();
        assert!(out.status.success(), "applying the DDL: {}", text(&out));
        ObserverDb { db, role, url }
    }

    /// The civicload binary as the application's role, `--target civic-observer`.
    pub fn civicload(&self, template: Option<&str>, args: &[&str]) -> Output {
        let mut cmd = super::civicload_command_at(&self.url, template, &[]);
        cmd.args(["--target", "civic-observer"]).args(args);
        cmd.output().expect("the civicload binary runs")
    }

    /// A superuser connection (for inspection and test setup).
    pub async fn connect(&self) -> PgConnection {
        self.db.connect().await
    }

    /// The pages held in `meetings_meetingpage`, keyed like the corpus.
    pub async fn pages(&self) -> Pages {
        let mut conn = self.connect().await;
        let rows = sqlx::query(
            "SELECT m.subdomain::text, d.document_type::text, d.meeting_name::text, d.meeting_date::text, p.page_number,
                    p.id::text, p.text, p.page_image::text
             FROM meetings_meetingpage p JOIN meetings_meetingdocument d ON d.id = p.document_id
             JOIN municipalities_muni m ON m.id = d.municipality_id",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        rows.into_iter()
            .map(|r| {
                let key = PageKey {
                    subdomain: r.get(0),
                    document_type: r.get(1),
                    meeting: r.get(2),
                    date: r.get(3),
                    page: r.get(4),
                };
                let content = PageContent {
                    source_id: r.get(5),
                    text: r.get(6),
                    page_image: Some(r.get(7)),
                    entities: serde_json::Value::Null,
                    votes: serde_json::Value::Null,
                };
                (key, content)
            })
            .collect()
    }

    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        let mut conn = self.connect().await;
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut conn)
            .await
            .unwrap()
    }
}

/// The corpus's pages as civic-observer holds them: `page_image` '' when missing, no
/// entities or votes.
pub fn as_observer(pages: &Pages) -> Pages {
    pages
        .iter()
        .map(|(k, v)| {
            let mut v = v.clone();
            v.page_image = Some(v.page_image.unwrap_or_default());
            v.entities = serde_json::Value::Null;
            v.votes = serde_json::Value::Null;
            (k.clone(), v)
        })
        .collect()
}

impl Drop for ObserverDb {
    fn drop(&mut self) {
        let drop_db = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.db.name);
        let drop_role = format!("DROP ROLE IF EXISTS \"{}\"", self.role);
        for sql in [drop_db, drop_role] {
            let _ = Command::new("psql")
                .args(["-h", &self.db.host, "-p", &self.db.port.to_string()])
                .args(["-d", "postgres", "-qAtc", &sql])
                .output();
        }
    }
}
