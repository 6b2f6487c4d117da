//! Building the search indexes (`SEARCH_INDEXES`): on a partitioned `meeting_pages`, each
//! partition's index on a connection of its own (`partitions`), then attached; and their
//! `fastupdate` switched around a load. Apart from `search`, which describes the indexes
//! and runs searches, so that neither module needs the other's caller.

use std::time::Instant;

use sqlx::{Connection, PgConnection, PgPool};

use super::leases::Lease;
use super::search::{index_state, BuildMode, IndexBuild, SearchError, SearchIndex, RERUN_MAINTAIN};
use super::sql::{self, autocommit};

/// The lease that serializes builds of one search index.
fn index_lease(index: &SearchIndex) -> String {
    format!("index {}", index.name)
}

/// Builds the index if it is missing (or invalid), under a lease so two civicload
/// processes finishing at once do not build it twice.
pub async fn ensure_search_index(
    pool: &PgPool,
    conn: &mut PgConnection,
    index: &SearchIndex,
    mode: BuildMode,
    owner: &str,
    maintenance_work_mem: &str,
) -> Result<IndexBuild, SearchError> {
    let started = Instant::now();
    let maintenance_work_mem = &gin_build_memory(maintenance_work_mem);
    let advice = RERUN_MAINTAIN;
    let err = |step| SearchError::sql(step, index.name, advice);
    let lease = Lease::acquire(pool, &index_lease(index), owner)
        .await
        .map_err(err("waiting for the index build lease"))?;
    let result = async {
        let mut replaced_invalid = false;
        let existing = index_state(pool, index.name).await?;
        if let Some(state) = &existing {
            if state.valid {
                let restored = restore_fastupdate_off(pool, index).await?;
                return Ok(IndexBuild {
                    name: index.name,
                    built: false,
                    replaced_invalid: false,
                    restored_fastupdate_off: restored,
                    took: started.elapsed(),
                    bytes: state.bytes,
                });
            }
            // An interrupted CREATE INDEX CONCURRENTLY leaves an invalid index that
            // IF NOT EXISTS would take for done. (A partitioned one is invalid until every
            // partition's index is attached: the build below completes it.)
            if state.partitioned {
                build_on_partitions(pool, index, mode, maintenance_work_mem).await?;
                return Ok(IndexBuild {
                    name: index.name,
                    built: true,
                    replaced_invalid: true,
                    restored_fastupdate_off: false,
                    took: started.elapsed(),
                    bytes: index_state(pool, index.name)
                        .await?
                        .map(|s| s.bytes)
                        .unwrap_or(0),
                });
            }
            let drop = match mode {
                BuildMode::Blocking => index.drop,
                BuildMode::Concurrently => index.drop_concurrently,
            };
            sqlx::raw_sql(drop)
                .execute(&mut *conn)
                .await
                .map_err(err("dropping an invalid index"))?;
            replaced_invalid = true;
        }
        build_index(pool, conn, index, mode, maintenance_work_mem).await?;
        let bytes = index_state(pool, index.name)
            .await?
            .map(|s| s.bytes)
            .unwrap_or(0);
        Ok(IndexBuild {
            name: index.name,
            built: true,
            replaced_invalid,
            restored_fastupdate_off: false,
            took: started.elapsed(),
            bytes,
        })
    }
    .await;
    let released = lease.release().await;
    let build = result?;
    released.map_err(err("releasing the index build lease"))?;
    Ok(build)
}

/// The most memory a GIN build gets: PostgreSQL's default maintenance_work_mem.
///
/// More is slower. A GIN build collects keys in a red-black tree until the memory is full,
/// then writes them out; a tree of millions of distinct keys (the phrase keys, a large
/// vocabulary) misses the CPU cache at every level. Measured on the 200k-page
/// large-vocabulary corpus, every partition's phrase-keys index built as civicload builds
/// them (2 connections, largest first), 1GB against 64MB alternated three times:
/// 41.5 / 40.0 / 36.1 s against 37.3 / 36.6 / 31.9 s, and 736 MB against 578 MB (entries
/// written in several sorted passes fill the index's pages better). The page vectors'
/// index: the same time within noise (17.4 / 14.1 / 15.9 s against 15.8 / 14.9 / 15.5 s),
/// 212 against 210 MB. At 4MB it is slower again (15.5 s against 8.7 s, one partition).
const GIN_BUILD_MEMORY_KB: u64 = 64 * 1024;

/// `maintenance_work_mem` for a GIN build: the setting, capped at [`GIN_BUILD_MEMORY_KB`].
/// A value this cannot read (the server validates it) is passed on as it is.
pub fn gin_build_memory(maintenance_work_mem: &str) -> String {
    let s = maintenance_work_mem.trim();
    let digits = s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (number, unit) = s.split_at(digits);
    let kb_per_unit = match unit.trim() {
        "" | "kB" => 1,
        "MB" => 1024,
        "GB" => 1024 * 1024,
        "TB" => 1024 * 1024 * 1024,
        _ => return maintenance_work_mem.to_string(),
    };
    match number.parse::<u64>() {
        Ok(n) if n.saturating_mul(kb_per_unit) > GIN_BUILD_MEMORY_KB => {
            format!("{GIN_BUILD_MEMORY_KB}kB")
        }
        _ => maintenance_work_mem.to_string(),
    }
}

/// Builds a missing index: on meeting_pages' partitions, each partition's on its own
/// connection (migration 0010); otherwise in one statement.
async fn build_index(
    pool: &PgPool,
    conn: &mut PgConnection,
    index: &SearchIndex,
    mode: BuildMode,
    maintenance_work_mem: &str,
) -> Result<(), SearchError> {
    let err = |step| SearchError::sql(step, index.name, RERUN_MAINTAIN);
    let partitioned = index.table == "meeting_pages"
        && !super::partitions::page_partitions(pool).await?.is_empty();
    match mode {
        // meeting_pages' partitions: their indexes on every core (migration 0010).
        _ if partitioned => {
            build_on_partitions(pool, index, mode, maintenance_work_mem).await?;
        }
        // In a transaction of its own, with its memory set there: that holds through
        // a pooler too.
        BuildMode::Blocking => {
            let mut tx = conn.begin().await.map_err(err("building the index"))?;
            sql::query(
                "SELECT set_config('maintenance_work_mem', $1, true), set_config('statement_timeout', '0', true)",
            )
            .bind(maintenance_work_mem)
            .execute(&mut *tx)
            .await
            .map_err(err("setting maintenance_work_mem"))?;
            sqlx::raw_sql(index.create)
                .execute(&mut *tx)
                .await
                .map_err(err("building the index"))?;
            tx.commit().await.map_err(err("building the index"))?;
        }
        // Cannot run in a transaction: alone, on the session's settings.
        BuildMode::Concurrently => {
            sqlx::raw_sql(index.create_concurrently)
                .execute(&mut *conn)
                .await
                .map_err(err("building the index"))?;
        }
    }
    Ok(())
}

/// meeting_pages' partitions: each partition's index on its own connection, as many at
/// once as the machine has cores, then attached (migration 0010).
async fn build_on_partitions(
    pool: &PgPool,
    index: &SearchIndex,
    mode: BuildMode,
    maintenance_work_mem: &str,
) -> Result<(), SearchError> {
    super::partitions::build_partitioned_index(
        pool,
        &pool.connect_options(),
        index.name,
        index.column,
        mode,
        maintenance_work_mem,
        build_workers(),
    )
    .await
}

/// How many partition indexes are built at once: one per core the machine reports.
pub fn build_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// Switches a present, valid search index to fastupdate = on for a mass update of
/// vectors; returns whether it now has it on (switched here, or left on by a vectorize
/// that was killed), so the caller switches it back at the end.
///
/// With fastupdate off every updated row inserts each of its few hundred lexemes into
/// the index on the spot: vectorize runs ~10x slower with the index present (measured:
/// 189 vs 2023 pages/s). With it on, rows go to the pending list, which VACUUM and
/// [`restore_fastupdate_off`] merge in sorted bulk. Meanwhile searches also read the
/// pending list (at most gin_pending_list_limit, 4 MB by default), so it is brief.
pub async fn relax_fastupdate(pool: &PgPool, index: &SearchIndex) -> Result<bool, SearchError> {
    match index_state(pool, index.name).await? {
        Some(s) if s.valid && s.partitioned => {
            super::partitions::set_fastupdate(pool, index.name, true).await?;
            Ok(true)
        }
        Some(s) if s.valid && s.fastupdate_off() => {
            sqlx::raw_sql(index.fastupdate_on)
                .execute(autocommit(pool))
                .await
                .map_err(SearchError::sql(
                    "switching fastupdate on",
                    index.name,
                    RERUN_MAINTAIN,
                ))?;
            Ok(true)
        }
        Some(s) => Ok(s.valid),
        None => Ok(false),
    }
}

/// Sets a search index back to fastupdate = off and merges its pending list, if it has
/// fastupdate on; returns whether it had.
pub async fn restore_fastupdate_off(
    pool: &PgPool,
    index: &SearchIndex,
) -> Result<bool, SearchError> {
    let err = |step| SearchError::sql(step, index.name, RERUN_MAINTAIN);
    match index_state(pool, index.name).await? {
        Some(s) if s.partitioned => {
            Ok(super::partitions::set_fastupdate(pool, index.name, false).await? > 0)
        }
        Some(s) if !s.fastupdate_off() => {
            sqlx::raw_sql(index.fastupdate_off)
                .execute(autocommit(pool))
                .await
                .map_err(err("switching fastupdate off"))?;
            sql::query("SELECT gin_clean_pending_list(to_regclass($1))")
                .bind(index.name)
                .execute(autocommit(pool))
                .await
                .map_err(err("merging the pending list"))?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::gin_build_memory;

    #[test]
    fn a_gin_build_gets_at_most_64_mb() {
        assert_eq!(gin_build_memory("1GB"), "65536kB");
        assert_eq!(gin_build_memory("128MB"), "65536kB");
        assert_eq!(gin_build_memory("64MB"), "64MB");
        assert_eq!(gin_build_memory("16MB"), "16MB");
        assert_eq!(gin_build_memory("2048"), "2048");
        assert_eq!(gin_build_memory("100000"), "65536kB");
        // Left to the server to accept or refuse.
        assert_eq!(gin_build_memory("1.5GB"), "1.5GB");
        assert_eq!(gin_build_memory("lots"), "lots");
    }
}
