//! A private PgBouncer in transaction-pooling mode in front of the shared local PostgreSQL:
//! its own ini and user list in a temporary folder, its own loopback port, a pool of
//! [`SERVER_CONNECTIONS`] server connections per database (so the clients of a test really
//! do share them), stopped by its PID when dropped.
//!
//! Clients log in to it without a password (`auth_type = trust`, loopback only); it logs in
//! to PostgreSQL over the unix socket as `postgres` (peer authentication), so it runs as the
//! `postgres` OS user. Debian's pgbouncer 1.18 needs `ignore_startup_parameters =
//! extra_float_digits`: sqlx sends that startup parameter.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{free_port, run_ok, text, whoami, TestDb};

const PGBOUNCER: &str = "/usr/sbin/pgbouncer";

/// Server connections per (database, user) pool.
pub const SERVER_CONNECTIONS: u32 = 3;

pub struct PgBouncer {
    pub dir: PathBuf,
    pub port: u16,
    pid: u32,
}

impl PgBouncer {
    pub fn start() -> PgBouncer {
        assert!(
            std::path::Path::new(PGBOUNCER).exists(),
            "{PGBOUNCER} is missing: run scripts/setup.sh (it installs pgbouncer)"
        );
        let dir = PathBuf::from(format!(
            "/tmp/civicload-pgbouncer-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let ini = format!(
            "[databases]
* = host=/var/run/postgresql port=5432 user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {dir}/userlist.txt
pool_mode = transaction
default_pool_size = {SERVER_CONNECTIONS}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 500
ignore_startup_parameters = extra_float_digits
# civicload creates the test database through the pooler: the login that failed before
# it existed is retried after 1 s instead of 15.
server_login_retry = 1
logfile = {dir}/pgbouncer.log
pidfile = {dir}/pgbouncer.pid
",
            dir = dir.display()
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).unwrap();
        std::fs::write(dir.join("userlist.txt"), format!("\"{}\" \"\"\n", whoami())).unwrap();
        run_ok(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir),
        );
        run_ok(
            Command::new("runuser")
                .args(["-u", "postgres", "--", PGBOUNCER, "-d"])
                .arg(dir.join("pgbouncer.ini")),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = loop {
            let pid = std::fs::read_to_string(dir.join("pgbouncer.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok());
            if let Some(pid) = pid {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break pid;
                }
            }
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not start: {}",
                std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        PgBouncer { dir, port, pid }
    }

    /// The URL of a test database through this pooler.
    pub fn url(&self, db: &TestDb) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{}",
            whoami(),
            self.port,
            db.name
        )
    }

    /// PgBouncer's log, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let out = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .output();
        if out.as_ref().is_ok_and(|o| o.status.success()) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        } else if let Ok(out) = out {
            eprintln!("stopping pgbouncer {}: {}", self.pid, text(&out));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
