//! The spool archive end to end, against real PostgreSQL, real Datasette and a real
//! S3-protocol server (moto, on loopback): a spooled backfill can be replayed and reloaded
//! with the source stopped, into databases that end with exactly the source's pages (same
//! digest, same page set); a killed replay resumes to the same end; damaged and missing
//! files are named while the rest loads; other tools (pyarrow) read the files.
//!
//! Needs `scripts/setup.sh` (PostgreSQL, `.venv` with datasette, moto, pyarrow).
// Tests talk to PostgreSQL directly with sqlx (clippy.toml steers the program to stages::store::sql).
#![allow(clippy::disallowed_methods)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const SOCKET: &str = "/var/run/postgresql";

fn civicload() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_civicload"));
    c.env("RUST_LOG", "info,sqlx=warn")
        .env_remove("DATABASE_URL")
        .env_remove("CIVICLOAD_SPOOL")
        .env_remove("CIVICLOAD_SOURCE_URL")
        .stdin(Stdio::null());
    c
}

/// Runs civicload and returns (exit code, stdout, stderr).
fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("civicload runs");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn psql(db: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([
            "-h",
            SOCKET,
            "-d",
            db,
            "-AtX",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .expect("psql runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A database of its own (tests/support: dropped at the end), read through psql.
struct TestDb(support::TestDb);

impl std::ops::Deref for TestDb {
    type Target = support::TestDb;
    fn deref(&self) -> &support::TestDb {
        &self.0
    }
}

impl TestDb {
    fn new(tag: &str) -> Self {
        TestDb(support::TestDb::new(&format!("spool_{tag}")))
    }
    fn url(&self) -> String {
        self.0.url.clone()
    }
    fn query(&self, sql: &str) -> String {
        psql(&self.name, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
    /// `civicload digest` on this database.
    fn digest(&self) -> String {
        let (code, out, err) = run(civicload().args(["--database-url", &self.url(), "digest"]));
        assert_eq!(code, 0, "digest failed: {err}");
        out.trim().to_string()
    }
    /// Every page as identity + source id, sorted.
    fn page_set(&self) -> BTreeSet<String> {
        self.query(
            "SELECT m.subdomain || '|' || d.document_type || '|' || d.meeting_name || '|' || d.meeting_date
                    || '|' || p.page_number || '|' || p.source_id || '|' || md5(p.text)
             FROM meeting_pages p JOIN meeting_documents d ON d.id = p.document_id
             JOIN municipalities m ON m.id = d.municipality_id",
        )
        .lines()
        .map(str::to_string)
        .collect()
    }
    fn rejects(&self) -> BTreeSet<String> {
        self.query(
            "SELECT m.subdomain || '|' || r.document_type || '|' || coalesce(r.source_id, '') || '|' || r.reason
             FROM page_rejects r JOIN municipalities m ON m.id = r.municipality_id",
        )
        .lines()
        .map(str::to_string)
        .collect()
    }
}

/// A generated corpus served by Datasette on `port`, with `bad` bad rows (bad dates, bad
/// pages, duplicate pages: every kind of reject travels through the archive).
struct Source {
    dir: tempfile::TempDir,
    template: String,
    subdomains: Vec<String>,
    running: bool,
}

impl Source {
    fn start(pages: u32, municipalities: u32, bad: u32, port: u16) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("python3")
            .arg(format!("{ROOT}/fixtures/generate.py"))
            .arg("--out")
            .arg(dir.path())
            .args(["--pages", &pages.to_string()])
            .args(["--municipalities", &municipalities.to_string()])
            .args(["--bad-rows", &bad.to_string()])
            .stdout(Stdio::null())
            .status()
            .expect("generate.py runs");
        assert!(status.success(), "generating the corpus failed");
        let summary: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join("summary.json")).expect("summary.json"),
        )
        .expect("summary is JSON");
        let subdomains = summary["municipalities"]
            .as_object()
            .expect("municipalities")
            .keys()
            .cloned()
            .collect();
        let out = Command::new(format!("{ROOT}/scripts/fixture-server.sh"))
            .arg("start")
            .arg(dir.path())
            .arg(port.to_string())
            .stderr(Stdio::null())
            .output()
            .expect("fixture-server.sh runs");
        assert!(
            out.status.success(),
            "the fixture server did not start on {port}"
        );
        let template = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .expect("the template line")
            .trim()
            .to_string();
        Source {
            dir,
            template,
            subdomains,
            running: true,
        }
    }

    fn stop(&mut self) {
        if self.running {
            let _ = Command::new(format!("{ROOT}/scripts/fixture-server.sh"))
                .arg("stop")
                .arg(self.dir.path())
                .stderr(Stdio::null())
                .status();
            self.running = false;
        }
    }

    /// `backfill --spool` of every municipality into `db`; returns the run manifest URL.
    fn backfill(
        &self,
        db: &TestDb,
        spool: &str,
        batch_size: u32,
        env: &[(&str, String)],
    ) -> String {
        let mut cmd = civicload();
        cmd.args(["--source-url", &self.template, "--database-url", &db.url()])
            .args([
                "--spool",
                spool,
                "backfill",
                "--subdomain",
                &self.subdomains.join(","),
            ])
            .args(["--batch-size", &batch_size.to_string()]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (code, out, err) = run(&mut cmd);
        assert_eq!(code, 0, "backfill failed:\n{out}\n{err}");
        out.lines()
            .find_map(|l| l.strip_prefix("Run manifest: "))
            .unwrap_or_else(|| panic!("no run manifest printed:\n{out}"))
            .trim()
            .to_string()
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.stop();
    }
}

/// moto's S3 server on loopback, with one bucket.
struct S3 {
    child: Child,
    endpoint: String,
}

impl S3 {
    fn start(port: u16, bucket: &str) -> Self {
        let child = Command::new(format!("{ROOT}/.venv/bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts (scripts/setup.sh installs it)");
        let s3 = S3 {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        // CreateBucket is a bare PUT on the bucket path; moto accepts it unsigned.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                write!(
                    conn,
                    "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .expect("request sent");
                let mut answer = String::new();
                let _ = conn.read_to_string(&mut answer);
                assert!(
                    answer.starts_with("HTTP/1.1 200"),
                    "creating the bucket: {answer}"
                );
                return s3;
            }
            assert!(Instant::now() < deadline, "moto did not start on {port}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "civicload-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "civicload-test".into()),
        ]
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every job manifest under a file:// archive folder, parsed.
fn job_manifests(archive: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(archive).expect("archive folder") {
        let sub = sub.expect("entry").path();
        if !sub.is_dir() || sub.ends_with("_runs") {
            continue;
        }
        for doc in ["agenda", "minutes"] {
            let path = sub.join(doc).join("manifest.json");
            if path.exists() {
                out.push(serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap());
            }
        }
    }
    out
}

/// (path relative to the root, pages) of every file the manifests list.
fn manifest_files(archive: &Path) -> Vec<(String, u64)> {
    job_manifests(archive)
        .iter()
        .flat_map(|m| m["jobs"].as_array().unwrap().clone())
        .flat_map(|j| j["files"].as_array().unwrap().clone())
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["pages"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn replay(db: &TestDb, from: &str, env: &[(&str, String)]) -> (i32, String, String) {
    let mut cmd = civicload();
    cmd.args(["--database-url", &db.url(), "replay", "--from", from]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

fn reload(db: &TestDb, manifest: &str, yes: bool, env: &[(&str, String)]) -> (i32, String, String) {
    let mut cmd = civicload();
    cmd.args([
        "--database-url",
        &db.url(),
        "reload",
        "--manifest",
        manifest,
    ]);
    if yes {
        cmd.arg("--yes");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

/// The digest line a reload prints last.
fn printed_digest(stdout: &str) -> String {
    stdout
        .lines()
        .rev()
        .find(|l| l.contains(" pages, digest "))
        .unwrap_or_else(|| panic!("no digest printed:\n{stdout}"))
        .trim()
        .to_string()
}

fn archive_dir(tmp: &tempfile::TempDir) -> (PathBuf, String) {
    let dir = tmp.path().join("archive");
    let url = format!("file://{}", dir.display());
    (dir, url)
}

#[test]
fn a_file_archive_replays_and_reloads_to_exactly_the_source_pages() {
    let mut source = Source::start(4000, 5, 6, 8851);
    let tmp = tempfile::tempdir().unwrap();
    let (dir, url) = archive_dir(&tmp);
    let live = TestDb::new("file_live");
    let run_manifest = source.backfill(&live, &url, 250, &[]);
    source.stop(); // from here on, any request to the source would fail

    // Every listed file is there under its final name; nothing half-written is left.
    let files = manifest_files(&dir);
    assert!(
        files.len() > 16,
        "expected several files per job, got {}",
        files.len()
    );
    for (rel, _) in &files {
        assert!(dir.join(rel).is_file(), "{rel} is listed but missing");
    }
    let leftovers: Vec<_> = walk(&dir)
        .into_iter()
        .filter(|p| p.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    assert_eq!(
        files.iter().map(|f| f.1).sum::<u64>(),
        live.query("SELECT count(*) FROM meeting_pages")
            .parse::<u64>()
            .unwrap()
    );

    let replayed = TestDb::new("file_replay");
    let (code, out, err) = replay(&replayed, &url, &[]);
    assert_eq!(code, 0, "replay failed:\n{out}\n{err}");
    assert_eq!(replayed.digest(), live.digest());
    assert_eq!(replayed.page_set(), live.page_set());
    assert_eq!(replayed.rejects(), live.rejects());
    // The replay computed every vector and its phrase keys itself, as the server would.
    assert_eq!(
        replayed.query(
            "SELECT count(*) FROM meeting_pages
             WHERE search_vector IS DISTINCT FROM civicload_page_vector(text)
                OR phrase_keys IS DISTINCT FROM civicload_phrase_keys(search_vector)"
        ),
        "0"
    );
    assert_eq!(
        replayed.query("SELECT count(*) FROM backfill_jobs WHERE status = 'completed' AND verified_at IS NOT NULL"),
        live.query("SELECT count(*) FROM backfill_jobs"),
        "every job, empty tables included, is replayed and verified"
    );

    // Idempotent: a second replay loads nothing again and changes nothing.
    let loaded = replayed.query("SELECT count(*) FROM replay_files");
    assert_eq!(loaded, files.len().to_string());
    let (code, out, _) = replay(&replayed, &url, &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(replayed.query("SELECT count(*) FROM replay_files"), loaded);
    assert_eq!(replayed.digest(), live.digest());

    // Reload the run manifest: same digest, printed and stored.
    let staging = TestDb::new("file_reload");
    let (code, out, err) = reload(&staging, &run_manifest, false, &[]);
    assert_eq!(code, 0, "reload failed:\n{out}\n{err}");
    assert_eq!(printed_digest(&out), live.digest());
    assert_eq!(staging.page_set(), live.page_set());

    // Not empty any more: without a terminal and without --yes, refuse and touch nothing.
    staging.query("DELETE FROM meeting_pages WHERE id IN (SELECT id FROM meeting_pages LIMIT 3)");
    let before = staging.digest();
    let (code, _, err) = reload(&staging, &run_manifest, false, &[]);
    assert_eq!(
        code, 2,
        "reload into a non-empty database must refuse: {err}"
    );
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(staging.digest(), before);
    // With --yes it empties the database first and ends with the same digest again.
    let (code, out, err) = reload(&staging, &run_manifest, true, &[]);
    assert_eq!(code, 0, "reload --yes failed:\n{out}\n{err}");
    assert_eq!(printed_digest(&out), live.digest());
    assert_eq!(staging.digest(), live.digest());

    check_with_pyarrow(&dir);
}

#[test]
fn an_s3_archive_replays_and_reloads_with_the_source_stopped() {
    let s3 = S3::start(8861, "civicload-spool");
    let env = s3.env();
    let mut source = Source::start(3000, 4, 2, 8852);
    let live = TestDb::new("s3_live");
    let run_manifest = source.backfill(&live, "s3://civicload-spool/archive/v1", 200, &env);
    assert!(
        run_manifest.starts_with("s3://civicload-spool/archive/v1/_runs/"),
        "{run_manifest}"
    );
    source.stop();

    let replayed = TestDb::new("s3_replay");
    let (code, out, err) = replay(&replayed, "s3://civicload-spool/archive/v1", &env);
    assert_eq!(code, 0, "replay failed:\n{out}\n{err}");
    assert_eq!(replayed.digest(), live.digest());
    assert_eq!(replayed.page_set(), live.page_set());
    assert_eq!(replayed.rejects(), live.rejects());

    let staging = TestDb::new("s3_reload");
    let (code, out, err) = reload(&staging, &run_manifest, false, &env);
    assert_eq!(code, 0, "reload failed:\n{out}\n{err}");
    assert_eq!(printed_digest(&out), live.digest());
    // The same manifest reloaded again gives the same digest.
    let (code, out, err) = reload(&staging, &run_manifest, true, &env);
    assert_eq!(code, 0, "second reload failed:\n{out}\n{err}");
    assert_eq!(printed_digest(&out), live.digest());

    // A subset replay reads only that municipality's jobs.
    let one = &source.subdomains[0];
    let partial = TestDb::new("s3_partial");
    let mut cmd = civicload();
    cmd.args([
        "--database-url",
        &partial.url(),
        "replay",
        "--from",
        "s3://civicload-spool/archive/v1",
        "--subdomain",
        one,
    ]);
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let (code, out, err) = run(&mut cmd);
    assert_eq!(code, 0, "{out}\n{err}");
    let expected: BTreeSet<String> = live
        .page_set()
        .into_iter()
        .filter(|p| p.starts_with(&format!("{one}|")))
        .collect();
    assert_eq!(partial.page_set(), expected);
}

#[test]
fn a_killed_replay_resumes_to_the_same_digest() {
    let mut source = Source::start(8000, 4, 6, 8853);
    let tmp = tempfile::tempdir().unwrap();
    let (dir, url) = archive_dir(&tmp);
    let live = TestDb::new("kill_live");
    source.backfill(&live, &url, 40, &[]);
    source.stop();
    let total = manifest_files(&dir).len();
    assert!(total > 150, "{total} files");

    let target = TestDb::new("kill_replay");
    let mut child = civicload()
        .args([
            "--database-url",
            &target.url(),
            "replay",
            "--from",
            &url,
            "--concurrency",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("replay starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    let loaded_at_kill = loop {
        let n: usize = psql(&target.name, "SELECT count(*) FROM replay_files")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if n >= 20 {
            child.kill().expect("SIGKILL"); // kill -9: no cleanup of any kind
            child.wait().unwrap();
            break n;
        }
        assert!(Instant::now() < deadline, "the replay made no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the replay ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let after_kill: usize = target
        .query("SELECT count(*) FROM replay_files")
        .parse()
        .unwrap();
    assert!(
        after_kill >= loaded_at_kill && after_kill < total,
        "killed with {after_kill} of {total} files loaded"
    );
    assert_ne!(target.digest(), live.digest());

    let (code, out, err) = replay(&target, &url, &[]);
    assert_eq!(code, 0, "the resumed replay failed:\n{out}\n{err}");
    assert!(
        err.contains("already loaded"),
        "the resumed replay should skip loaded files:\n{err}"
    );
    assert_eq!(
        target.query("SELECT count(*) FROM replay_files"),
        total.to_string()
    );
    assert_eq!(target.digest(), live.digest());
    assert_eq!(target.page_set(), live.page_set());
    assert_eq!(target.rejects(), live.rejects());
}

#[test]
fn a_killed_spooled_backfill_resumes_and_its_archive_replays_exactly() {
    let mut source = Source::start(6000, 4, 6, 8855);
    let tmp = tempfile::tempdir().unwrap();
    let (dir, url) = archive_dir(&tmp);
    let live = TestDb::new("bkill_live");
    let backfill_cmd = |cmd: &mut Command| {
        cmd.args([
            "--source-url",
            &source.template,
            "--database-url",
            &live.url(),
        ])
        .args([
            "--spool",
            &url,
            "backfill",
            "--subdomain",
            &source.subdomains.join(","),
        ])
        .args(["--batch-size", "40", "--concurrency", "2"]);
    };
    let mut cmd = civicload();
    backfill_cmd(&mut cmd);
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("backfill starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let committed: i64 = psql(
            &live.name,
            "SELECT coalesce(sum(batch_seq), 0) FROM backfill_jobs",
        )
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
        if committed >= 30 {
            child.kill().expect("SIGKILL");
            child.wait().unwrap();
            break;
        }
        assert!(Instant::now() < deadline, "the backfill made no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backfill ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Every committed batch has its file: the checkpoint never runs ahead of the archive.
    for line in live
        .query(
            "SELECT m.subdomain || ' ' || j.document_type || ' ' || j.batch_seq FROM backfill_jobs j
             JOIN municipalities m ON m.id = j.municipality_id",
        )
        .lines()
    {
        let [sub, doc, seq]: [&str; 3] = line.split(' ').collect::<Vec<_>>().try_into().unwrap();
        for s in 1..=seq.parse::<i64>().unwrap() {
            let file = dir.join(format!("{sub}/{doc}/000000-{s:08}.parquet"));
            assert!(file.is_file(), "batch {s} of {sub}/{doc} is committed but {} is missing", file.display());
        }
    }

    let mut cmd = civicload();
    backfill_cmd(&mut cmd);
    let (code, out, err) = run(&mut cmd);
    assert_eq!(code, 0, "the resumed backfill failed:\n{out}\n{err}");
    source.stop();

    // Each job manifest lists one file per batch, numbered 1..n within each pass (a job
    // that completed before the kill starts a fresh pass on the rerun), with no leftovers
    // of the killed attempt; and the archive replays to exactly the live database.
    for m in job_manifests(&dir) {
        let job = &m["jobs"][0];
        let mut by_pass: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
        for f in job["files"].as_array().unwrap() {
            by_pass
                .entry(f["pass"].as_i64().unwrap())
                .or_default()
                .push(f["seq"].as_i64().unwrap());
        }
        for (pass, seqs) in by_pass {
            assert_eq!(
                seqs,
                (1..=seqs.len() as i64).collect::<Vec<_>>(),
                "{}/{} pass {pass}",
                job["subdomain"],
                job["document_type"]
            );
        }
    }
    let replayed = TestDb::new("bkill_replay");
    let (code, out, err) = replay(&replayed, &url, &[]);
    assert_eq!(code, 0, "replay failed:\n{out}\n{err}");
    assert_eq!(replayed.digest(), live.digest());
    assert_eq!(replayed.page_set(), live.page_set());
    assert_eq!(replayed.rejects(), live.rejects());
}

#[test]
fn damaged_and_missing_files_are_named_and_the_rest_still_loads() {
    let mut source = Source::start(3000, 4, 0, 8854);
    let tmp = tempfile::tempdir().unwrap();
    let (dir, url) = archive_dir(&tmp);
    let live = TestDb::new("damage_live");
    source.backfill(&live, &url, 100, &[]);
    source.stop();

    // Two files of two different jobs: one corrupted in place, one deleted.
    let files = manifest_files(&dir);
    let job_of = |rel: &str| rel.rsplit_once('/').unwrap().0.to_string();
    let (corrupt, corrupt_pages) = files[files.len() / 3].clone();
    let (missing, missing_pages) = files
        .iter()
        .find(|(rel, _)| job_of(rel) != job_of(&corrupt))
        .cloned()
        .expect("a second job");
    let backup = tmp.path().join("backup");
    std::fs::create_dir_all(&backup).unwrap();
    std::fs::copy(dir.join(&corrupt), backup.join("corrupt")).unwrap();
    std::fs::copy(dir.join(&missing), backup.join("missing")).unwrap();
    let mut bytes = std::fs::read(dir.join(&corrupt)).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(dir.join(&corrupt), bytes).unwrap();
    std::fs::remove_file(dir.join(&missing)).unwrap();

    let target = TestDb::new("damage_replay");
    let (code, out, err) = replay(&target, &url, &[]);
    assert_eq!(code, 1, "a damaged archive must not exit 0:\n{out}\n{err}");
    let all = format!("{out}\n{err}");
    let corrupt_url = format!("{url}/{corrupt}");
    let missing_url = format!("{url}/{missing}");
    assert!(
        all.contains(&format!("{corrupt_url} is corrupted")),
        "{all}"
    );
    assert!(all.contains(&format!("{missing_url} is missing")), "{all}");

    // Those two jobs failed, naming their file; every other job loaded and verified.
    let failed = target.query(
        "SELECT m.subdomain || '/' || j.document_type || ' ' || j.last_error FROM backfill_jobs j
         JOIN municipalities m ON m.id = j.municipality_id WHERE j.status = 'failed' ORDER BY 1",
    );
    let failed: Vec<&str> = failed.lines().collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(
        failed
            .iter()
            .any(|l| l.starts_with(&job_of(&corrupt)) && l.contains(&corrupt_url)),
        "{failed:?}"
    );
    assert!(
        failed
            .iter()
            .any(|l| l.starts_with(&job_of(&missing)) && l.contains(&missing_url)),
        "{failed:?}"
    );
    assert_eq!(
        target.query("SELECT count(*) FROM backfill_jobs WHERE status = 'completed' AND verified_at IS NOT NULL"),
        (live.query("SELECT count(*) FROM backfill_jobs").parse::<usize>().unwrap() - 2).to_string()
    );
    // Everything but the two files' pages is there, and nothing that is not in the source.
    let loaded = target.page_set();
    let source_pages = live.page_set();
    assert!(loaded.is_subset(&source_pages));
    assert_eq!(
        loaded.len() as u64,
        source_pages.len() as u64 - corrupt_pages - missing_pages
    );

    // Restore the two files: the same command loads just them and ends complete.
    std::fs::copy(backup.join("corrupt"), dir.join(&corrupt)).unwrap();
    std::fs::copy(backup.join("missing"), dir.join(&missing)).unwrap();
    let (code, out, err) = replay(&target, &url, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(target.digest(), live.digest());
}

/// Every file of the archive read by pyarrow: the documented schema, metadata and counts.
fn check_with_pyarrow(dir: &Path) {
    let script = r#"
import hashlib, json, pathlib, sys
import pyarrow as pa, pyarrow.parquet as pq
root = pathlib.Path(sys.argv[1])
expected = pa.schema([
    pa.field("source_id", pa.string(), nullable=False),
    pa.field("meeting", pa.string(), nullable=False),
    pa.field("meeting_date", pa.date32(), nullable=False),
    pa.field("page_number", pa.int32(), nullable=False),
    pa.field("text", pa.string(), nullable=False),
    pa.field("page_image", pa.string()),
    pa.field("entities", pa.string()),
    pa.field("votes", pa.string()),
])
keys = {"civicload.schema_version", "civicload.version", "civicload.subdomain", "civicload.document_type",
        "civicload.pass", "civicload.seq", "civicload.last", "civicload.fetched", "civicload.rejects"}
files = rejects = 0
for manifest in root.glob("*/*/manifest.json"):
    job = json.loads(manifest.read_text())["jobs"][0]
    for f in job["files"]:
        path = root / f["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == f["sha256"], path
        table = pq.read_table(path)
        assert table.schema.remove_metadata().equals(expected), (path, table.schema)
        assert table.num_rows == f["pages"], path
        meta = {k.decode(): v.decode() for k, v in pq.read_metadata(path).metadata.items()}
        assert keys <= set(meta), (path, sorted(meta))
        assert meta["civicload.subdomain"] == job["subdomain"] and meta["civicload.document_type"] == job["document_type"]
        assert int(meta["civicload.seq"]) == f["seq"] and meta["civicload.schema_version"] == "1"
        assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
        stored = json.loads(meta["civicload.rejects"])
        assert len(stored) == f["rejects"] and all({"source_id", "reason", "detail", "raw"} <= set(r) for r in stored)
        assert int(meta["civicload.fetched"]) == f["rows"] == f["pages"] + f["rejects"]
        files += 1
        rejects += len(stored)
print(f"ok {files} files {rejects} rejects")
"#;
    let out = Command::new(format!("{ROOT}/.venv/bin/python"))
        .args(["-c", script])
        .arg(dir)
        .output()
        .expect("the venv python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("ok "),
        "pyarrow check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stdout.contains(" 0 rejects"),
        "the corpus has rejects: {stdout}"
    );
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}
