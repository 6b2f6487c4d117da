//! `meeting_pages` as hash partitions of `municipality_id` (migration 0010): the partitions,
//! the page search index built on every core (each partition's GIN on a connection of its
//! own, the largest first, as many at once as there are workers, then attached to the
//! partitioned index), and the per-partition settings a partitioned table cannot hold
//! (autovacuum pauses, fastupdate).
//!
//! Every statement here names a partition or an index read from the catalog; the server
//! quotes it (`format('%I')`) and [`ddl`] sends it.

use std::collections::VecDeque;
use std::sync::Mutex;

use futures::future::BoxFuture;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};

use super::search::{maintenance_session, BuildMode, SearchError};
use super::sql::{self, autocommit};

const ADVICE: &str = "Rerun `civicload maintain`: it builds the partitions' indexes that are missing and attaches them.";

fn err(step: &'static str) -> impl FnOnce(sqlx::Error) -> SearchError {
    SearchError::sql(step, "meeting_pages partitions", ADVICE)
}

/// A partition of `meeting_pages` and its heap size.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Partition {
    pub name: String,
    pub bytes: i64,
}

/// The partitions of `meeting_pages`, largest first; empty when it is a plain table.
pub async fn page_partitions(pool: &PgPool) -> Result<Vec<Partition>, SearchError> {
    sql::query_as(
        "SELECT c.relname::text AS name, pg_table_size(c.oid) AS bytes
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = to_regclass('meeting_pages')
         ORDER BY bytes DESC, name",
    )
    .fetch_all(autocommit(pool))
    .await
    .map_err(err("listing the partitions"))
}

/// The tables that hold pages: the partitions, or `meeting_pages` itself.
pub async fn page_tables(pool: &PgPool) -> Result<Vec<String>, SearchError> {
    let parts = page_partitions(pool).await?;
    Ok(match parts.is_empty() {
        true => vec!["meeting_pages".to_string()],
        false => parts.into_iter().map(|p| p.name).collect(),
    })
}

/// Runs one DDL statement the server composed from catalog names (see the module docs).
async fn ddl(conn: &mut PgConnection, statement: &str) -> Result<(), sqlx::Error> {
    sql::raw(statement).execute(conn).await.map(|_| ())
}

/// `format(template, args...)` on the server: identifiers quoted with %I.
async fn compose(
    conn: &mut PgConnection,
    template: &str,
    args: &[&str],
) -> Result<String, sqlx::Error> {
    let mut q = sql::query_scalar("SELECT format($1, VARIADIC $2::text[])").bind(template);
    q = q.bind(args);
    q.fetch_one(autocommit(conn)).await
}

/// Sets a storage option on every table holding pages (`ALTER TABLE %I SET (...)` or
/// `RESET (...)`), e.g. the bulk load's autovacuum pause.
pub async fn alter_page_tables(pool: &PgPool, template: &'static str) -> Result<(), SearchError> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(err("altering the partitions"))?;
    for table in page_tables(pool).await? {
        let statement = compose(&mut conn, template, &[&table])
            .await
            .map_err(err("altering the partitions"))?;
        ddl(&mut conn, &statement)
            .await
            .map_err(err("altering the partitions"))?;
    }
    Ok(())
}

/// The partitions' indexes attached to a partitioned index, with their validity.
async fn attached(pool: &PgPool, parent: &str) -> Result<Vec<(String, String, bool)>, SearchError> {
    sql::query_as(
        "SELECT t.relname::text, c.relname::text, x.indisvalid
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         JOIN pg_index x ON x.indexrelid = c.oid JOIN pg_class t ON t.oid = x.indrelid
         WHERE i.inhparent = to_regclass($1)",
    )
    .bind(parent)
    .fetch_all(autocommit(pool))
    .await
    .map_err(err("reading the partitions' indexes"))
}

/// Sets fastupdate on or off on every partition's index of a partitioned index (a
/// partitioned index holds no settings of its own), merging pending lists when off.
/// Returns how many partition indexes changed.
pub async fn set_fastupdate(pool: &PgPool, parent: &str, on: bool) -> Result<usize, SearchError> {
    // Partition indexes are built WITH (fastupdate = off): "on" means the option says so.
    let targets: Vec<String> = sql::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = to_regclass($1)
           AND coalesce('fastupdate=on' = ANY(c.reloptions), false) <> $2",
    )
    .bind(parent)
    .bind(on)
    .fetch_all(autocommit(pool))
    .await
    .map_err(err("reading the partitions' indexes"))?;
    let mut conn = pool.acquire().await.map_err(err("setting fastupdate"))?;
    let template = match on {
        true => "ALTER INDEX %I SET (fastupdate = on)",
        false => "ALTER INDEX %I SET (fastupdate = off)",
    };
    for index in &targets {
        let statement = compose(&mut conn, template, &[index])
            .await
            .map_err(err("setting fastupdate"))?;
        ddl(&mut conn, &statement)
            .await
            .map_err(err("setting fastupdate"))?;
        if !on {
            sql::query("SELECT gin_clean_pending_list(to_regclass($1))")
                .bind(index)
                .execute(autocommit(&mut *conn))
                .await
                .map_err(err("merging the pending list"))?;
        }
    }
    Ok(targets.len())
}

/// One partition's index: its name for a partition (`<partition>_search_vector_gin`).
fn child_name(partition: &str, column: &str) -> String {
    format!("{partition}_{column}_gin")
}

/// Builds a partitioned search index on every core: each partition's index that is
/// missing (or invalid: an interrupted concurrent build) is built on a connection of its
/// own, `workers` at a time, largest partitions first so the last to finish are small;
/// then the partitioned index is created ON ONLY the parent and every partition's index
/// attached, which makes it valid. `Concurrently` builds each partition's index
/// CONCURRENTLY (PostgreSQL 15 cannot build a partitioned index concurrently), so writes
/// go on meanwhile.
pub async fn build_partitioned_index(
    pool: &PgPool,
    options: &PgConnectOptions,
    parent: &'static str,
    column: &'static str,
    mode: BuildMode,
    maintenance_work_mem: &str,
    workers: usize,
) -> Result<(), SearchError> {
    let parts = page_partitions(pool).await?;
    let done = attached(pool, parent).await?;
    let missing = parts
        .iter()
        .map(|p| p.name.clone())
        .filter(|p| !done.iter().any(|(t, _, valid)| t == p && *valid))
        .collect();
    on_sessions(
        options,
        maintenance_work_mem,
        workers,
        missing,
        |conn, part| {
            Box::pin(async move {
                build_one(conn, &part, column, mode)
                    .await
                    .map_err(err("building a partition's index"))
            })
        },
    )
    .await?;

    let mut conn = maintenance_session(options, maintenance_work_mem).await?;
    let statement = compose(
        &mut conn,
        "CREATE INDEX IF NOT EXISTS %I ON ONLY meeting_pages USING gin (%I) WITH (fastupdate = off)",
        &[parent, column],
    )
    .await
    .map_err(err("creating the partitioned index"))?;
    ddl(&mut conn, &statement)
        .await
        .map_err(err("creating the partitioned index"))?;
    let done = attached(pool, parent).await?;
    for part in &parts {
        if done.iter().any(|(t, _, _)| *t == part.name) {
            continue;
        }
        let statement = compose(
            &mut conn,
            "ALTER INDEX %I ATTACH PARTITION %I",
            &[parent, &child_name(&part.name, column)],
        )
        .await
        .map_err(err("attaching a partition's index"))?;
        ddl(&mut conn, &statement)
            .await
            .map_err(err("attaching a partition's index"))?;
    }
    let _ = conn.close().await;
    Ok(())
}

/// Runs `job` on each of `items`, in their order, on `workers` maintenance sessions at
/// once (each with `maintenance_work_mem`): PostgreSQL 15 builds an index on one core, so
/// the partitions' indexes are built and rebuilt side by side.
async fn on_sessions<F>(
    options: &PgConnectOptions,
    maintenance_work_mem: &str,
    workers: usize,
    items: Vec<String>,
    job: F,
) -> Result<(), SearchError>
where
    F: for<'c> Fn(&'c mut PgConnection, String) -> BoxFuture<'c, Result<(), SearchError>>,
{
    let n = workers.clamp(1, items.len().max(1));
    let queue = Mutex::new(VecDeque::from(items));
    let worker = || async {
        let mut conn = maintenance_session(options, maintenance_work_mem).await?;
        loop {
            let Some(item) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front() else {
                break;
            };
            job(&mut conn, item).await?;
        }
        let _ = conn.close().await;
        Ok::<(), SearchError>(())
    };
    futures::future::try_join_all((0..n).map(|_| worker())).await?;
    Ok(())
}

/// REINDEX INDEX CONCURRENTLY of `index` on sessions of its own (each with
/// `maintenance_work_mem`). A partitioned index is rebuilt partition by partition,
/// `workers` at a time, largest first (a REINDEX of the partitioned index itself rebuilds
/// them one after the other, on one core). Returns how many partition indexes it rebuilt,
/// or None when `index` is not partitioned (then rebuilt in one statement).
pub async fn reindex_side_by_side(
    pool: &PgPool,
    options: &PgConnectOptions,
    index: &str,
    maintenance_work_mem: &str,
    workers: usize,
) -> Result<Option<usize>, SearchError> {
    let parts: Vec<String> = sql::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i
         JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
         WHERE i.inhparent = to_regclass(quote_ident($1)) AND p.relkind = 'I'
         ORDER BY pg_relation_size(c.oid) DESC, c.relname",
    )
    .bind(index)
    .fetch_all(autocommit(pool))
    .await
    .map_err(err("reading the partitions' indexes"))?;
    let partitions = (!parts.is_empty()).then_some(parts.len());
    let items = match partitions {
        Some(_) => parts,
        None => vec![index.to_string()],
    };
    on_sessions(
        options,
        maintenance_work_mem,
        workers,
        items,
        |conn, item| {
            Box::pin(async move { super::maintenance::reindex_concurrently(conn, &item).await })
        },
    )
    .await?;
    Ok(partitions)
}

/// Builds one partition's index if it is missing; drops an invalid leftover first.
async fn build_one(
    conn: &mut PgConnection,
    partition: &str,
    column: &str,
    mode: BuildMode,
) -> Result<(), sqlx::Error> {
    let name = child_name(partition, column);
    let valid: Option<bool> =
        sql::query_scalar("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)")
            .bind(&name)
            .fetch_optional(autocommit(&mut *conn))
            .await?;
    if valid == Some(true) {
        return Ok(());
    }
    if valid == Some(false) {
        let statement = compose(conn, "DROP INDEX IF EXISTS %I", &[&name]).await?;
        ddl(conn, &statement).await?;
    }
    let template = match mode {
        BuildMode::Blocking => {
            "CREATE INDEX IF NOT EXISTS %I ON %I USING gin (%I) WITH (fastupdate = off)"
        }
        BuildMode::Concurrently => {
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS %I ON %I USING gin (%I) WITH (fastupdate = off)"
        }
    };
    let statement = compose(conn, template, &[&name, partition, column]).await?;
    ddl(conn, &statement).await
}
