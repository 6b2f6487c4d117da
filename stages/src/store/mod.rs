//! SQL for the tables the stages share: connecting (and creating the database on first
//! use), migrations, municipalities and the job table. Plain SQL with bound parameters.

pub mod jobs;
pub mod maintenance;
pub mod municipalities;
pub mod replay;
pub mod search;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
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

/// Connection-level failures and server shutdowns that a retry may get past.
pub fn is_transient_sql(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // 08: connection exception; 57P01-03: admin shutdown / crash / cannot connect now;
            // 40001/40P01: serialization failure / deadlock; 53300: too many connections.
            code.starts_with("08")
                || matches!(
                    code.as_ref(),
                    "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "53300"
                )
        }
        _ => false,
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

/// Applies the embedded migrations (idempotent).
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::migrate!("../migrations").run(pool).await?;
    Ok(())
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
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("3D000") => {
            let admin = options.clone().database("postgres");
            let mut conn = admin
                .connect()
                .await
                .map_err(|source| StoreError::Connect {
                    target: describe(&admin),
                    source,
                })?;
            // CREATE DATABASE takes no bind parameters; quote the identifier ourselves.
            let quoted = format!("\"{}\"", name.replace('"', "\"\""));
            match sqlx::query(&format!("CREATE DATABASE {quoted}"))
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
    let (pages, digest): (i64, Option<String>) = sqlx::query_as(
        "SELECT count(*), md5(string_agg(h, '' ORDER BY h)) FROM (
            SELECT md5(concat_ws(chr(31), m.subdomain, d.document_type, d.meeting_name, d.meeting_date::text,
                   p.page_number::text, p.source_id, p.text, coalesce(p.page_image, chr(9216)),
                   coalesce(p.entities::text, chr(9216)), coalesce(p.votes::text, chr(9216)))) AS h
            FROM meeting_pages p
            JOIN meeting_documents d ON d.id = p.document_id
            JOIN municipalities m ON m.id = d.municipality_id
         ) x",
    )
    .fetch_one(pool)
    .await?;
    Ok(Digest {
        pages,
        digest: digest.unwrap_or_else(|| "d41d8cd98f00b204e9800998ecf8427e".into()),
    })
}
