//! SQL for the tables the stages share: connecting (and creating the database on first
//! use), migrations, municipalities and the job table. Plain SQL with bound parameters,
//! sent as `sql` says so that it works through a transaction-pooling PgBouncer too.

pub mod integrity;
pub mod jobs;
pub mod leases;
pub mod maintenance;
pub mod municipalities;
pub mod observer;
pub mod pages;
pub mod partitions;
pub mod refresh;
pub mod rejects;
pub mod replay;
pub mod search;
pub mod search_fn;
pub mod search_index;
pub mod sql;
pub mod text_search;
pub mod webhook;

pub use sql::is_transient_sql;

use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::migrate::MigrateError;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tracing::info;

/// Where the local server listens when no URL is given (Debian's default socket folder).
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
pub const DEFAULT_DATABASE: &str = "civicload";

/// A database failure, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to PostgreSQL at {target}: {source}. Is the server running (scripts/setup.sh starts a local one) and is --database-url / DATABASE_URL right?")]
    Connect {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("the database URL is not valid: {0}")]
    BadUrl(String),
    #[error("applying migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error(transparent)]
    Schema(#[from] observer::SchemaError),
}

impl StoreError {
    /// A lost connection or a restarting server: worth reconnecting and trying again.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Connect { .. } => true,
            StoreError::Sql(e) => is_transient_sql(e),
            _ => false,
        }
    }
}

/// How a stalled statement is stopped from another connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendAbort {
    /// `pg_cancel_backend`: the statement fails, the session lives (its transaction is
    /// aborted and rolls back).
    Cancel,
    /// `pg_terminate_backend`: the session ends and its socket closes.
    Terminate,
}

/// Stops backend `pid`'s statement (the batch transaction of a stalled job) from another
/// connection of the pool, within a few seconds whatever the state of the pool. True when
/// the server signalled the backend. A role may signal its own backends.
pub async fn abort_backend(
    pool: &PgPool,
    pid: i32,
    how: BackendAbort,
) -> Result<bool, sqlx::Error> {
    let statement = match how {
        BackendAbort::Cancel => "SELECT pg_cancel_backend($1)",
        BackendAbort::Terminate => "SELECT pg_terminate_backend($1)",
    };
    let signal = sql::query_scalar::<bool>(statement)
        .bind(pid)
        .fetch_one(sql::autocommit(pool));
    match tokio::time::timeout(Duration::from_secs(10), signal).await {
        Ok(r) => r,
        Err(_) => Err(sqlx::Error::PoolTimedOut),
    }
}

/// How long callers keep retrying through a lost connection or a restarting server,
/// unless configured otherwise.
pub const DB_RETRY_FOR: Duration = Duration::from_secs(300);

/// Runs `attempt` until it succeeds, fails with an error `transient` refuses, or `retry_for`
/// has passed; between tries it calls `on_retry` (which logs) and waits with capped
/// exponential backoff (250 ms doubling to 10 s). Every database retry loop of civicload
/// is this one: a batch commit, a job-table call, a verification, a vectorize batch.
pub async fn retry_transient<T, E, F, Fut>(
    retry_for: Duration,
    transient: impl Fn(&E) -> bool,
    mut on_retry: impl FnMut(u32, &E),
    mut attempt: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + retry_for;
    let mut tries = 0u32;
    loop {
        match attempt().await {
            Err(e) if transient(&e) && Instant::now() < deadline => {
                tries += 1;
                on_retry(tries, &e);
                tokio::time::sleep(crate::source::backoff_delay(
                    tries,
                    Duration::from_millis(250),
                    Duration::from_secs(10),
                    None,
                ))
                .await;
            }
            other => return other,
        }
    }
}

/// Connection options from a URL, or the local socket and database `civicload`.
pub fn connect_options(url: Option<&str>) -> Result<PgConnectOptions, StoreError> {
    let options = match url {
        Some(url) => PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::BadUrl(format!("{} ({e})", crate::secret::redact_url(url))))?,
        None => PgConnectOptions::new()
            .host(DEFAULT_SOCKET_DIR)
            .database(DEFAULT_DATABASE),
    };
    Ok(options
        .application_name("civicload")
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Debug, Duration::from_secs(10)))
}

fn describe(options: &PgConnectOptions) -> String {
    format!(
        "{}:{} database {}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("(default)")
    )
}

/// Opens a pool, creating the database first if it does not exist yet, and applies
/// migrations.
pub async fn connect(
    options: PgConnectOptions,
    max_connections: u32,
) -> Result<PgPool, StoreError> {
    create_database_if_missing(&options).await?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(options.clone())
        .await
        .map_err(|source| StoreError::Connect {
            target: describe(&options),
            source,
        })?;
    migrate(&pool).await?;
    Ok(pool)
}

/// Opens a pool on civic-observer's database (`--target civic-observer`): sessions look in
/// civicload's bookkeeping schema first, where its migrations and job tables live; the
/// application's tables are checked (every missing or incompatible column named) and
/// civicload's objects for them installed. The database itself is never created here.
pub async fn connect_observer(
    options: PgConnectOptions,
    max_connections: u32,
) -> Result<(PgPool, observer::ObserverSchema), StoreError> {
    let schema = observer::types::BOOKKEEPING_SCHEMA;
    let options = options.options([("search_path", format!("{schema},public"))]);
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(options.clone())
        .await
        .map_err(|source| StoreError::Connect {
            target: describe(&options),
            source,
        })?;
    let found = observer::check_schema(&pool).await?;
    observer::prepare_bookkeeping(&pool).await?;
    migrate(&pool).await?;
    observer::install(&pool).await?;
    Ok((pool, found))
}

/// The transaction-level advisory lock that lets one process at a time migrate.
const MIGRATE_LOCK: i64 = 0x6369_7669_6370_6c00;

/// Applies the embedded migrations that are missing (idempotent), all in one transaction.
///
/// sqlx's own migrator holds a session advisory lock across its transactions and reuses
/// named statements: neither survives a transaction-pooling PgBouncer. This runner keeps
/// sqlx's bookkeeping table (`_sqlx_migrations`, same columns and checks), so databases
/// migrated by either are the same, but it serializes with `pg_advisory_xact_lock`: a
/// process that waits sees the migrations the first one committed.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let migrator = sqlx::migrate!("../migrations");
    let mut tx = pool.begin().await?;
    sql::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATE_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
            version BIGINT PRIMARY KEY,
            description TEXT NOT NULL,
            installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
            success BOOLEAN NOT NULL,
            checksum BYTEA NOT NULL,
            execution_time BIGINT NOT NULL
        )",
    )
    .execute(&mut *tx)
    .await?;
    let applied: Vec<(i64, Vec<u8>, bool)> =
        sql::query_as("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut *tx)
            .await?;
    let known = |version: i64| migrator.iter().find(|m| m.version == version);
    for (version, checksum, success) in &applied {
        if !success {
            return Err(MigrateError::Dirty(*version).into());
        }
        match known(*version) {
            None => return Err(MigrateError::VersionMissing(*version).into()),
            Some(m) if *m.checksum != checksum[..] => {
                return Err(MigrateError::VersionMismatch(*version).into())
            }
            Some(_) => {}
        }
    }
    for m in migrator.iter() {
        if m.migration_type.is_down_migration() || applied.iter().any(|a| a.0 == m.version) {
            continue;
        }
        if m.no_tx {
            // All migrations share one transaction: that is what makes them safe through a
            // pooler and beside a concurrent process.
            let why = format!(
                "migration {} is marked no-transaction; civicload's cannot be",
                m.version
            );
            return Err(MigrateError::Source(why.into()).into());
        }
        let started = Instant::now();
        sql::raw(m.sql.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| MigrateError::ExecuteMigration(e, m.version))?;
        sql::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES ($1, $2, TRUE, $3, $4)",
        )
        .bind(m.version)
        .bind(&*m.description)
        .bind(&*m.checksum)
        .bind(started.elapsed().as_nanos() as i64)
        .execute(&mut *tx)
        .await?;
        info!(version = m.version, description = %m.description, "Applied a migration.");
    }
    tx.commit().await?;
    Ok(())
}

/// Whether the server refused to create a session because the database does not exist.
/// PgBouncer passes the server's message on under its own code (08P01).
fn is_missing_database(db: &dyn sqlx::error::DatabaseError, name: &str) -> bool {
    db.code().as_deref() == Some("3D000")
        || (db.code().as_deref() == Some("08P01")
            && db.message() == format!("database \"{name}\" does not exist"))
}

/// Opens one connection whose session carries `settings`, given as startup options (no
/// statement, so nothing to undo). A pooler that cannot hold session settings refuses
/// them (PgBouncer: "unsupported startup parameter: options"): the session then opens
/// without them, on the server's defaults, and says so.
pub async fn connect_with_settings(
    options: &PgConnectOptions,
    settings: &[(&str, &str)],
) -> Result<PgConnection, sqlx::Error> {
    match options
        .clone()
        .options(settings.iter().copied())
        .connect()
        .await
    {
        Err(e) if refuses_session_settings(&e) => {
            info!(
                settings = ?settings.iter().map(|s| s.0).collect::<Vec<_>>(),
                "The connection pooler refuses session settings: this session runs with the server's defaults."
            );
            options.connect().await
        }
        other => other,
    }
}

/// Whether a connection was refused for its startup options: a pooler that cannot hold
/// session settings (PgBouncer in transaction mode: "unsupported startup parameter").
pub fn refuses_session_settings(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.message().contains("unsupported startup parameter"))
}

async fn create_database_if_missing(options: &PgConnectOptions) -> Result<(), StoreError> {
    let Some(name) = options.get_database().map(str::to_string) else {
        return Ok(());
    };
    match options.connect().await {
        Ok(conn) => {
            let _ = conn.close().await;
            Ok(())
        }
        Err(sqlx::Error::Database(db)) if is_missing_database(db.as_ref(), &name) => {
            let admin = options.clone().database("postgres");
            let mut conn = admin
                .connect()
                .await
                .map_err(|source| StoreError::Connect {
                    target: describe(&admin),
                    source,
                })?;
            // CREATE DATABASE takes no bind parameters; quote the identifier ourselves. It
            // cannot run in a transaction: one simple-protocol statement.
            let quoted = format!("\"{}\"", name.replace('"', "\"\""));
            match sql::raw(&format!("CREATE DATABASE {quoted}"))
                .execute(&mut conn)
                .await
            {
                Ok(_) => info!(database = %name, "Created the database."),
                // Another process created it first.
                Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P04") => {}
                Err(e) => return Err(e.into()),
            }
            let _ = conn.close().await;
            Ok(())
        }
        Err(source) => Err(StoreError::Connect {
            target: describe(options),
            source,
        }),
    }
}

/// An order-independent digest of the pages held: md5 over the sorted per-page hashes of
/// their identity and content (subdomain, document type, meeting, date, page number,
/// source id, text, page image, entities, votes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    pub pages: i64,
    pub digest: String,
}

pub async fn digest(pool: &PgPool) -> Result<Digest, sqlx::Error> {
    let (pages, digest): (i64, Option<String>) = sql::query_as(
        "SELECT count(*), md5(string_agg(h, '' ORDER BY h)) FROM (
            SELECT md5(concat_ws(chr(31), m.subdomain, d.document_type, d.meeting_name, d.meeting_date::text,
                   p.page_number::text, p.source_id, p.text, coalesce(p.page_image, chr(9216)),
                   coalesce(p.entities::text, chr(9216)), coalesce(p.votes::text, chr(9216)))) AS h
            FROM meeting_pages p
            JOIN meeting_documents d ON d.id = p.document_id
            JOIN municipalities m ON m.id = d.municipality_id
         ) x",
    )
    .fetch_one(sql::autocommit(pool))
    .await?;
    Ok(Digest {
        pages,
        digest: digest.unwrap_or_else(|| "d41d8cd98f00b204e9800998ecf8427e".into()),
    })
}
