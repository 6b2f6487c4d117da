//! Test harness shared by the integration tests: generated corpora (cached), a real
//! Datasette 1.0a28 serving them like civic.band, a fresh PostgreSQL database per test,
//! the civicload binary, and a page-by-page comparison of PostgreSQL against the corpus.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use sqlx::{Connection, PgConnection, Row};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Quiet test logs unless RUST_LOG asks.
pub fn init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A generated corpus directory (fixtures/generate.py), cached across test runs.
#[derive(Clone, Debug)]
pub struct Corpus {
    pub dir: PathBuf,
}

impl Corpus {
    /// Changes one municipality upstream with fixtures/mutate.py: `reocr` pages get a new
    /// id, `delete` vanish and `add` new ones appear (chosen by `seed`).
    pub fn mutate(&self, sub: &str, reocr: u32, delete: u32, add: u32, seed: u32) {
        let out = std::process::Command::new("python3")
            .arg(repo_root().join("fixtures/mutate.py"))
            .arg(&self.dir)
            .args(["--subdomain", sub, "--reocr", &reocr.to_string()])
            .args(["--delete", &delete.to_string(), "--add", &add.to_string()])
            .args(["--seed", &seed.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }

    /// The cached corpus for these parameters; generated once (atomically) if absent.
    pub fn cached(pages: u64, municipalities: u64, seed: u64, bad_rows: u64) -> Corpus {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("corpora");
        std::fs::create_dir_all(&base).unwrap();
        let dir = base.join(format!("p{pages}-m{municipalities}-s{seed}-b{bad_rows}"));
        if !dir.join("summary.json").exists() {
            let tmp = base.join(format!(
                "tmp-{}-{}",
                std::process::id(),
                rand::random::<u32>()
            ));
            let out = Command::new("python3")
                .arg(repo_root().join("fixtures/generate.py"))
                .args([
                    "--out",
                    tmp.to_str().unwrap(),
                    "--pages",
                    &pages.to_string(),
                ])
                .args([
                    "--municipalities",
                    &municipalities.to_string(),
                    "--seed",
                    &seed.to_string(),
                ])
                .args(["--bad-rows", &bad_rows.to_string()])
                .output()
                .expect("python3 runs fixtures/generate.py");
            assert!(
                out.status.success(),
                "generate.py failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // Another test may have won the race; either copy is identical.
            if std::fs::rename(&tmp, &dir).is_err() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
        }
        Corpus { dir }
    }

    /// A private, writable copy (for tests that change the source).
    pub fn copy(&self, name: &str) -> Corpus {
        // Copies left by earlier test processes that are gone.
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let file_name = entry.file_name().to_string_lossy().to_string();
            let mut parts = file_name.rsplitn(3, '-');
            let (_, pid) = (
                parts.next(),
                parts.next().and_then(|p| p.parse::<u32>().ok()),
            );
            if let Some(pid) = pid {
                if file_name != "corpora" && !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let status = Command::new("cp")
            .arg("-r")
            .arg(&self.dir)
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success());
        for f in ["datasette.pid", "datasette.log"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        Corpus { dir }
    }

    pub fn summary(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.dir.join("summary.json")).unwrap())
            .unwrap()
    }

    /// The municipality with the most pages.
    pub fn largest(&self) -> String {
        let summary = self.summary();
        self.subdomains()
            .into_iter()
            .max_by_key(|s| summary["municipalities"][s]["pages"].as_i64().unwrap_or(0))
            .expect("the corpus has municipalities")
    }

    /// Every municipality of the corpus, sorted.
    pub fn subdomains(&self) -> Vec<String> {
        let mut subs: Vec<String> = self.summary()["municipalities"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        subs.sort();
        subs
    }

    /// Every source row of the corpus (valid or not), from fixtures/dump.py.
    pub fn rows(&self) -> Vec<Value> {
        let out = Command::new("python3")
            .arg(repo_root().join("fixtures/dump.py"))
            .arg(&self.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "dump.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The pages PostgreSQL must hold: every row that can be stored faithfully (an id, a
    /// meeting, a calendar date, a page >= 1), and for two rows of one table with the same
    /// (meeting, date, page) the one with the lowest id, as civicload reads in id order.
    pub fn expected_pages(&self) -> Pages {
        let mut pages = Pages::new();
        for r in self.rows() {
            let (Some(id), Some(meeting), Some(date), Some(page)) = (
                r["source_id"].as_str(),
                r["meeting"].as_str(),
                r["date"].as_str(),
                r["page"].as_i64(),
            ) else {
                continue;
            };
            if page < 1
                || chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_err()
                || date.len() != 10
            {
                continue;
            }
            let key = PageKey {
                subdomain: r["subdomain"].as_str().unwrap().into(),
                document_type: r["document_type"].as_str().unwrap().into(),
                meeting: meeting.into(),
                date: date.into(),
                page: page as i32,
            };
            let content = PageContent {
                source_id: id.into(),
                text: r["text"].as_str().unwrap_or("").replace('\0', ""),
                page_image: r["page_image"].as_str().map(String::from),
                entities: r["entities"].clone(),
                votes: r["votes"].clone(),
            };
            match pages.get(&key) {
                Some(existing) if existing.source_id <= content.source_id => {}
                _ => {
                    pages.insert(key, content);
                }
            }
        }
        pages
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PageKey {
    pub subdomain: String,
    pub document_type: String,
    pub meeting: String,
    pub date: String,
    pub page: i32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PageContent {
    pub source_id: String,
    pub text: String,
    pub page_image: Option<String>,
    pub entities: Value,
    pub votes: Value,
}

pub type Pages = BTreeMap<PageKey, PageContent>;

/// A Datasette 1.0a28 serving a corpus like civic.band; stopped when dropped.
pub struct Datasette {
    pub corpus: Corpus,
    pub port: u16,
    pub template: String,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The servers of this test binary, one per corpus folder (the script keeps one per folder).
type Servers = std::collections::HashMap<PathBuf, std::sync::Weak<Datasette>>;

fn servers() -> std::sync::MutexGuard<'static, Servers> {
    static SERVERS: std::sync::OnceLock<std::sync::Mutex<Servers>> = std::sync::OnceLock::new();
    SERVERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

impl Datasette {
    /// The server for this corpus, shared by the tests of one binary that use it (the
    /// script keeps one server per corpus folder); stopped when the last user drops it.
    pub fn start(corpus: &Corpus) -> std::sync::Arc<Datasette> {
        use std::sync::{Arc, Weak};
        let mut servers = servers();
        if let Some(live) = servers.get(&corpus.dir).and_then(Weak::upgrade) {
            return live;
        }
        let script = repo_root().join("scripts/fixture-server.sh");
        // A server left behind by an earlier, killed test run.
        let _ = Command::new(&script).arg("stop").arg(&corpus.dir).output();
        let port = free_port();
        let out = Command::new(&script)
            .arg("start")
            .arg(&corpus.dir)
            .arg(port.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "fixture-server failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let template = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .trim()
            .to_string();
        let server = Arc::new(Datasette {
            corpus: corpus.clone(),
            port,
            template,
        });
        servers.insert(corpus.dir.clone(), Arc::downgrade(&server));
        server
    }
}

impl Drop for Datasette {
    fn drop(&mut self) {
        // Under the registry's lock, and only when no other test has started a new server
        // for this folder meanwhile: between the last user's drop and this line, another
        // test may have found this one dead and started its own, which the script's `stop`
        // (it stops whatever server the folder's pidfile names) would otherwise kill.
        let mut servers = servers();
        if let Some(entry) = servers.get(&self.corpus.dir) {
            if entry.strong_count() > 0 {
                return;
            }
        }
        servers.remove(&self.corpus.dir);
        let _ = Command::new(repo_root().join("scripts/fixture-server.sh"))
            .arg("stop")
            .arg(&self.corpus.dir)
            .output();
    }
}

/// A fresh database, dropped with the test.
pub struct TestDb {
    pub name: String,
    pub url: String,
    /// The socket folder and port of the server that holds it (dropped there, only there).
    pub host: String,
    pub port: u16,
}

impl TestDb {
    pub fn new(prefix: &str) -> TestDb {
        let name = format!(
            "t_{prefix}_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let (host, port) = test_server();
        TestDb {
            url: format!("postgres:///{name}?host={host}&port={port}"),
            name,
            host,
            port,
        }
    }

    /// Creates the database now, with civicload's schema (`migrate`) or empty, and opens a
    /// pool on it (most tests let the civicload binary create it on first use instead).
    pub async fn create(&self, migrate: bool) -> sqlx::PgPool {
        let options = sqlx::postgres::PgConnectOptions::new()
            .host(&self.host)
            .port(self.port)
            .database(&self.name);
        if migrate {
            return stages::store::connect(options, 4)
                .await
                .expect("create and migrate the test database");
        }
        let port = self.port.to_string();
        run_ok(Command::new("createdb").args(["-h", &self.host, "-p", &port, &self.name]));
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .expect("connect to the new test database")
    }

    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url)
            .await
            .expect("the test database exists (civicload creates it on first use)")
    }

    /// The pages held, keyed like the corpus.
    pub async fn pages(&self) -> Pages {
        let mut conn = self.connect().await;
        let rows = sqlx::query(
            "SELECT m.subdomain, d.document_type, d.meeting_name, d.meeting_date::text AS date, p.page_number,
                    p.source_id, p.text, p.page_image, p.entities, p.votes
             FROM meeting_pages p JOIN meeting_documents d ON d.id = p.document_id
             JOIN municipalities m ON m.id = d.municipality_id",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        rows.into_iter()
            .map(|r| {
                (
                    PageKey {
                        subdomain: r.get(0),
                        document_type: r.get(1),
                        meeting: r.get(2),
                        date: r.get(3),
                        page: r.get(4),
                    },
                    PageContent {
                        source_id: r.get(5),
                        text: r.get(6),
                        page_image: r.get(7),
                        entities: r.get::<Option<Value>, _>(8).unwrap_or(Value::Null),
                        votes: r.get::<Option<Value>, _>(9).unwrap_or(Value::Null),
                    },
                )
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

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                "-h",
                &self.host,
                "-p",
                &self.port.to_string(),
                "-d",
                "postgres",
                "-qAtc",
            ])
            .arg(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .output();
    }
}

/// The PostgreSQL server the tests use: the local one (socket /var/run/postgresql, port
/// 5432), or the one `CIVICLOAD_TEST_PGHOST` (socket folder) and `CIVICLOAD_TEST_PGPORT` name.
pub fn test_server() -> (String, u16) {
    let host =
        std::env::var("CIVICLOAD_TEST_PGHOST").unwrap_or_else(|_| "/var/run/postgresql".into());
    let port = std::env::var("CIVICLOAD_TEST_PGPORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(5432);
    (host, port)
}

/// Asserts two page sets are equal, showing the first differences readably.
#[track_caller]
pub fn assert_same_pages(expected: &Pages, actual: &Pages) {
    if expected == actual {
        return;
    }
    let mut lines = Vec::new();
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !actual.contains_key(*k))
        .collect();
    let extra: Vec<_> = actual
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    let differing: Vec<_> = expected
        .iter()
        .filter(|(k, v)| actual.get(*k).is_some_and(|a| a != *v))
        .map(|(k, _)| k)
        .collect();
    lines.push(format!(
        "PostgreSQL differs from the corpus: {} expected, {} held; {} missing, {} extra, {} with other content",
        expected.len(),
        actual.len(),
        missing.len(),
        extra.len(),
        differing.len()
    ));
    for k in missing.iter().take(5) {
        lines.push(format!("  missing: {k:?}"));
    }
    for k in extra.iter().take(5) {
        lines.push(format!("  extra:   {k:?}"));
    }
    for k in differing.iter().take(5) {
        let (e, a) = (&expected[*k], &actual[*k]);
        lines.push(format!(
            "  differs: {k:?}\n    expected id {} text {:?}…\n    held     id {} text {:?}…",
            e.source_id,
            e.text.chars().take(60).collect::<String>(),
            a.source_id,
            a.text.chars().take(60).collect::<String>()
        ));
    }
    panic!("{}", lines.join("\n"));
}

/// The civicload binary with a database and a source.
pub fn civicload(db: &TestDb, template: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = civicload_command(db, template, args);
    cmd.output().expect("the civicload binary runs")
}

pub fn civicload_command(db: &TestDb, template: Option<&str>, args: &[&str]) -> Command {
    civicload_command_at(&db.url, template, args)
}

/// The civicload binary with a database URL of its own (e.g. through a pooler).
pub fn civicload_command_at(url: &str, template: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_civicload"));
    cmd.arg("--database-url").arg(url);
    if let Some(t) = template {
        cmd.arg("--source-url").arg(t);
    }
    cmd.args(args)
        .env("CI", "true")
        .env_remove("DATABASE_URL")
        .env_remove("CIVICLOAD_SOURCE_URL")
        .env_remove("CIVICLOAD_SPOOL");
    cmd.env(
        "RUST_LOG",
        std::env::var("CIVICLOAD_TEST_LOG").unwrap_or_else(|_| "warn".into()),
    );
    cmd
}

/// stdout + stderr, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `status --json` as values.
pub fn status_json(db: &TestDb) -> Vec<Value> {
    let out = civicload(db, None, &["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn sum_field(jobs: &[Value], field: &str) -> i64 {
    jobs.iter().map(|j| j[field].as_i64().unwrap_or(0)).sum()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub mod observer;
pub mod pgbouncer;
pub mod pgproxy;
pub mod proxy;

/// A private PostgreSQL 15 cluster on its own port and socket, for tests that restart the
/// server (the shared local server must stay up for the other tests).
pub struct PrivatePostgres {
    pub dir: PathBuf,
    pub port: u16,
    /// Also listens on 127.0.0.1 with TLS (a self-signed certificate), trusting every
    /// login: for tests that reach it over TCP, e.g. through `pgproxy`.
    pub tcp_tls: bool,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        Self::start_with(false)
    }

    /// A private server that also listens on 127.0.0.1:`port` with TLS on.
    pub fn start_tls() -> PrivatePostgres {
        Self::start_with(true)
    }

    fn start_with(tcp_tls: bool) -> PrivatePostgres {
        let dir = PathBuf::from(format!(
            "/tmp/civicload-pg-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(dir.join("sock")).unwrap();
        let port = free_port();
        run_ok(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir),
        );
        let me = whoami();
        run_ok(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(format!("{PG_BIN}/initdb"))
                .args(["-A", "trust", "-U", &me, "-D"])
                .arg(dir.join("data")),
        );
        if tcp_tls {
            let data = dir.join("data");
            run_ok(
                Command::new("openssl")
                    .args([
                        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    ])
                    .args(["-subj", "/CN=localhost", "-keyout"])
                    .arg(data.join("server.key"))
                    .arg("-out")
                    .arg(data.join("server.crt")),
            );
            run_ok(
                Command::new("chmod")
                    .arg("600")
                    .arg(data.join("server.key")),
            );
            run_ok(
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(data.join("server.key"))
                    .arg(data.join("server.crt")),
            );
        }
        let pg = PrivatePostgres { dir, port, tcp_tls };
        pg.ctl("start");
        pg
    }

    fn ctl(&self, action: &str) {
        let network = match self.tcp_tls {
            true => "-c listen_addresses=127.0.0.1 -c ssl=on",
            false => "-c listen_addresses=''",
        };
        let opts = format!(
            "-p {} -k {} -c fsync=off {network}",
            self.port,
            self.dir.join("sock").display()
        );
        run_ok(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(format!("{PG_BIN}/pg_ctl"))
                .args(["-w", "-m", "fast", "-D"])
                .arg(self.dir.join("data"))
                .args(["-l"])
                .arg(self.dir.join("log"))
                .args(["-o", &opts, action]),
        );
    }

    /// Stops and starts the server again (clients lose their connections).
    pub fn restart(&self) {
        self.ctl("restart");
    }

    pub fn db(&self, name: &str) -> TestDb {
        TestDb {
            name: name.into(),
            url: format!(
                "postgres:///{name}?host={}&port={}",
                self.dir.join("sock").display(),
                self.port
            ),
            host: self.dir.join("sock").display().to_string(),
            port: self.port,
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.ctl("stop");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn whoami() -> String {
    String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string()
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed: {}", text(&out));
}
