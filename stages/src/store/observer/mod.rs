//! SQL for `--target civic-observer`: the application's Django tables (CIVIC_OBSERVER.md),
//! which civicload never creates, alters or drops. This module checks them at start
//! (tables, columns, compatible types, the schema generation) and installs civicload's own
//! objects in its bookkeeping schema; `pages` and `municipalities` write them.

pub mod municipalities;
pub mod pages;
pub mod types;
pub mod upkeep;

use std::collections::BTreeMap;

use sqlx::PgPool;

use super::sql::{self, autocommit};
use crate::store::observer::types::Generation;

/// What the start-up check found: the generation and the column limits rejects follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObserverSchema {
    pub generation: Generation,
    /// Longest meeting name the documents (and, in G2, the pages) can hold, in characters.
    pub meeting_name_max: Option<i32>,
    /// Longest page image path `meetings_meetingpage.page_image` can hold.
    pub page_image_max: Option<i32>,
}

/// The application's tables do not hold what civicload writes (a usage error, exit 2).
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("civic-observer's tables cannot take civicload's rows: {}. Run the application's migrations (or point --database-url at its database), then retry", .0.join("; "))]
    Mismatch(Vec<String>),
    #[error("checking civic-observer's tables failed: {0}")]
    Sql(#[from] sqlx::Error),
}

/// The kind of column civicload needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Uuid,
    Timestamptz,
    Text,
    Int,
    Date,
    Tsvector,
}

impl Kind {
    fn accepts(self, pg_type: &str) -> bool {
        match self {
            Kind::Uuid => pg_type == "uuid",
            Kind::Timestamptz => pg_type == "timestamp with time zone",
            Kind::Text => pg_type == "text" || pg_type.starts_with("character varying"),
            Kind::Int => pg_type == "integer" || pg_type == "bigint",
            Kind::Date => pg_type == "date",
            Kind::Tsvector => pg_type == "tsvector",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::Uuid => "uuid",
            Kind::Timestamptz => "timestamp with time zone",
            Kind::Text => "text or varchar",
            Kind::Int => "integer",
            Kind::Date => "date",
            Kind::Tsvector => "tsvector",
        }
    }
}

use Kind::*;

/// The columns civicload writes or reads in both generations.
const COMMON: &[(&str, &[(&str, Kind)])] = &[
    (
        "municipalities_muni",
        &[
            ("id", Uuid),
            ("created", Timestamptz),
            ("modified", Timestamptz),
            ("subdomain", Text),
            ("name", Text),
            ("state", Text),
            ("country", Text),
            ("kind", Text),
            ("pages", Int),
            ("last_updated", Timestamptz),
            ("last_indexed", Timestamptz),
        ],
    ),
    (
        "meetings_meetingdocument",
        &[
            ("id", Uuid),
            ("created", Timestamptz),
            ("modified", Timestamptz),
            ("municipality_id", Uuid),
            ("meeting_name", Text),
            ("meeting_date", Date),
            ("document_type", Text),
        ],
    ),
    (
        "meetings_meetingpage",
        &[
            ("id", Text),
            ("created", Timestamptz),
            ("modified", Timestamptz),
            ("document_id", Uuid),
            ("page_number", Int),
            ("text", Text),
            ("page_image", Text),
        ],
    ),
    (
        "notebooks_notebookentry",
        &[
            ("id", Uuid),
            ("modified", Timestamptz),
            ("notebook_id", Uuid),
            ("meeting_page_id", Text),
            ("note", Text),
        ],
    ),
    (
        "meetings_backfilljob",
        &[
            ("id", Int),
            ("created", Timestamptz),
            ("modified", Timestamptz),
            ("municipality_id", Uuid),
            ("document_type", Text),
            ("status", Text),
            ("last_cursor", Text),
            ("pages_fetched", Int),
            ("pages_created", Int),
            ("pages_updated", Int),
            ("errors_encountered", Int),
            ("expected_count", Int),
            ("actual_count", Int),
            ("verified_at", Timestamptz),
            ("last_error", Text),
            ("retry_count", Int),
        ],
    ),
];

const G1: &[(&str, &str, Kind)] = &[
    ("meetings_meetingpage", "search_vector", Tsvector),
    (
        "meetings_meetingdocument",
        "meeting_name_search_vector",
        Tsvector,
    ),
];

const G2: &[(&str, &str, Kind)] = &[
    ("meetings_meetingpage", "municipality_id", Uuid),
    ("meetings_meetingpage", "municipality_subdomain", Text),
    ("meetings_meetingpage", "municipality_name", Text),
    ("meetings_meetingpage", "state", Text),
    ("meetings_meetingpage", "meeting_name", Text),
    ("meetings_meetingpage", "meeting_date", Date),
    ("meetings_meetingpage", "document_type", Text),
];

/// (table, column) -> (type as PostgreSQL formats it, character limit).
type Columns = BTreeMap<(String, String), (String, Option<i32>)>;

async fn read_columns(pool: &PgPool) -> Result<Columns, sqlx::Error> {
    let tables: Vec<&str> = COMMON.iter().map(|t| t.0).collect();
    let rows: Vec<(String, String, String, Option<i32>)> = sql::query_as(
        "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod),
                CASE WHEN a.atttypid = 'varchar'::regtype AND a.atttypmod > 4 THEN a.atttypmod - 4 END
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
         WHERE c.oid = ANY(SELECT to_regclass(t) FROM unnest($1::text[]) AS t)
           AND a.attnum > 0 AND NOT a.attisdropped",
    )
    .bind(&tables)
    .fetch_all(autocommit(pool))
    .await?;
    Ok(rows
        .into_iter()
        .map(|(t, c, ty, max)| ((t, c), (ty, max)))
        .collect())
}

/// Checks that the application's tables hold every column civicload writes with a
/// compatible type, and tells the generation. Every missing or incompatible
/// `table.column` is named in the error.
pub async fn check_schema(pool: &PgPool) -> Result<ObserverSchema, SchemaError> {
    let found = read_columns(pool).await?;
    let has = |t: &str, c: &str| found.contains_key(&(t.to_string(), c.to_string()));
    let generation = if has("meetings_meetingpage", "search_vector") {
        Generation::G1
    } else {
        Generation::G2
    };
    let extra = match generation {
        Generation::G1 => G1,
        Generation::G2 => G2,
    };
    let wanted = COMMON
        .iter()
        .flat_map(|(t, cols)| cols.iter().map(move |(c, k)| (*t, *c, *k)))
        .chain(extra.iter().copied());
    let mut problems = Vec::new();
    for (table, column, kind) in wanted {
        match found.get(&(table.to_string(), column.to_string())) {
            None if !found.keys().any(|(t, _)| t == table) => {
                let p = format!("table {table} is missing (needs {table}.{column})");
                problems.push(p);
            }
            None => problems.push(format!("{table}.{column} is missing ({})", kind.describe())),
            Some((ty, _)) if !kind.accepts(ty) => problems.push(format!(
                "{table}.{column} is {ty}, civicload needs {}",
                kind.describe()
            )),
            Some(_) => {}
        }
    }
    if !problems.is_empty() {
        return Err(SchemaError::Mismatch(problems));
    }
    let max = |t: &str, c: &str| found[&(t.to_string(), c.to_string())].1;
    let meeting_name_max = match generation {
        Generation::G1 => max("meetings_meetingdocument", "meeting_name"),
        Generation::G2 => [
            max("meetings_meetingdocument", "meeting_name"),
            max("meetings_meetingpage", "meeting_name"),
        ]
        .into_iter()
        .flatten()
        .min(),
    };
    Ok(ObserverSchema {
        generation,
        meeting_name_max,
        page_image_max: max("meetings_meetingpage", "page_image"),
    })
}

const INSTALL_SQL: &str = include_str!("install.sql");
/// Serializes concurrent installs (CREATE OR REPLACE of one function from two sessions fails).
const INSTALL_LOCK: i64 = 0x6369_7669_636f_6273;

/// Creates or updates civicload's own objects for this target in its bookkeeping schema
/// (the kept-pages table, the vector-trigger switch, the job mirror): idempotent.
pub async fn install(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sql::query("SELECT pg_advisory_xact_lock($1)")
        .bind(INSTALL_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(INSTALL_SQL).execute(&mut *tx).await?;
    tx.commit().await
}

/// Makes sure the bookkeeping schema exists (before migrations run in it) and that
/// `unaccent`, which civicload's vector function names as `public.unaccent`, is installed.
pub async fn prepare_bookkeeping(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sql::query("SELECT pg_advisory_xact_lock($1)")
        .bind(INSTALL_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(
        "CREATE SCHEMA IF NOT EXISTS civicload;
         CREATE EXTENSION IF NOT EXISTS unaccent SCHEMA public",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// An order-independent digest of the pages held in civic-observer's tables, over the
/// same fields as the own schema's digest where the application has them.
pub async fn digest(pool: &PgPool) -> Result<super::Digest, sqlx::Error> {
    let (pages, digest): (i64, Option<String>) = sql::query_as(
        "SELECT count(*), md5(string_agg(h, '' ORDER BY h)) FROM (
            SELECT md5(concat_ws(chr(31), m.subdomain, d.document_type, d.meeting_name, d.meeting_date::text,
                   p.page_number::text, p.id, p.text, p.page_image)) AS h
            FROM meetings_meetingpage p
            JOIN meetings_meetingdocument d ON d.id = p.document_id
            JOIN municipalities_muni m ON m.id = d.municipality_id
         ) x",
    )
    .fetch_one(autocommit(pool))
    .await?;
    Ok(super::Digest {
        pages,
        digest: digest.unwrap_or_else(|| "d41d8cd98f00b204e9800998ecf8427e".into()),
    })
}
