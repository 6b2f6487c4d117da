//! Pages and documents in civic-observer's tables (`meetings_meetingpage`,
//! `meetings_meetingdocument`), and the notebook entries that reference pages.
//!
//! A batch is staged with binary COPY (like the own schema's upsert route), then, in the
//! batch's transaction: rows the application's columns cannot hold become rejects,
//! documents are upserted, re-OCR'd pages replace the old ones (notebook entries follow),
//! and pages are upserted by id, writing only what changed. The small public functions
//! (`write_batch`, `replace_reocr`, `delete_stale`) are what a refresh reuses.

use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use super::ObserverSchema;
use crate::batch::{JobKey, PageBatch};
use crate::copy::{CopyRows, RowKey, STAGING_COLUMNS};
use crate::store::observer::types::{Generation, StaleOutcome, StoredCount};
use crate::store::sql::{self, autocommit};
use crate::watchdog::Pulse;

/// What writing one batch into civic-observer's tables did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub created: i64,
    pub updated: i64,
    /// Rows the application's columns cannot hold, recorded in `page_rejects`.
    pub rejected: i64,
    /// Pages replaced by their re-OCR'd version (new id, same document and page).
    pub replaced: i64,
}

/// Writes a batch's pages (and documents, rejects, replacements) inside `tx`.
pub async fn write_batch(
    tx: &mut Transaction<'_, Postgres>,
    schema: &ObserverSchema,
    batch: &PageBatch,
    pulse: &Pulse,
) -> Result<Written, sqlx::Error> {
    let mut w = Written::default();
    if batch.rows.num_rows() == 0 {
        return Ok(w);
    }
    stage(tx, batch, pulse).await?;
    w.rejected = reject_unfit(tx, schema, &batch.job).await?;
    upsert_documents(tx, schema, &batch.job).await?;
    let pairs = find_reocr(tx, &batch.job).await?;
    // Up to here the batch only read pages. In G1 with civicload's vectors the
    // application's trigger is switched off around the page writes (install.sql,
    // README "civic-observer"): its lock, which waits for and holds off other writers of
    // pages, is taken inside the one call that writes them, and held to the commit.
    let switch = schema.generation == Generation::G1 && batch.vectors.is_some();
    let old: Vec<&str> = pairs.iter().map(|p| p.0.as_str()).collect();
    let new: Vec<&str> = pairs.iter().map(|p| p.1.as_str()).collect();
    (w.replaced, w.created, w.updated) = sql::query_as(
        "SELECT o_replaced, o_created, o_updated FROM observer_write_pages($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&batch.job.subdomain)
    .bind(batch.job.document_type.as_str())
    .bind(&old)
    .bind(&new)
    .bind(schema.generation == Generation::G1)
    .bind(switch)
    .bind(crate::store::observer::types::GIN_CLEANER.load(std::sync::atomic::Ordering::Relaxed))
    .fetch_one(&mut **tx)
    .await?;
    Ok(w)
}

async fn stage(
    tx: &mut Transaction<'_, Postgres>,
    batch: &PageBatch,
    pulse: &Pulse,
) -> Result<(), sqlx::Error> {
    sql::query(
        "CREATE TEMP TABLE civicload_stage (
            source_id text, meeting text, meeting_date date, page_number int,
            text text, page_image text, entities jsonb, votes jsonb, search_vector tsvector,
            phrase_keys int4[], keep_created timestamptz
         ) ON COMMIT DROP",
    )
    .execute(&mut **tx)
    .await?;
    let mut copy = tx
        .copy_in_raw(&format!(
            "COPY civicload_stage ({STAGING_COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let rows = CopyRows::new(&batch.rows, batch.vectors.as_deref(), RowKey::Meeting);
    if let Err(e) = crate::store::pages::send_rows(&mut copy, &rows, pulse).await {
        let _ = copy.abort("sending the rows failed").await;
        return Err(e);
    }
    copy.finish().await?;
    Ok(())
}

/// Moves the staged rows the application cannot hold into `page_rejects`, with their
/// reason: a meeting name or page image longer than its column, an id that a page of
/// another municipality (or another page of this one) holds already. Nothing is truncated.
async fn reject_unfit(
    tx: &mut PgConnection,
    schema: &ObserverSchema,
    job: &JobKey,
) -> Result<i64, sqlx::Error> {
    sql::query_scalar(
        "WITH muni AS (SELECT id FROM municipalities_muni WHERE subdomain = $1),
         bad AS (
            SELECT s.source_id, s.meeting, s.meeting_date, s.page_number, s.text, s.page_image,
                CASE WHEN char_length(s.meeting) > $3 THEN 'meeting_name_too_long'
                     WHEN char_length(coalesce(s.page_image, '')) > $4 THEN 'page_image_too_long'
                     WHEN h.municipality_id IS DISTINCT FROM (SELECT id FROM muni) THEN 'id_held_by_another_municipality'
                     ELSE 'id_held_by_another_page' END AS reason,
                h.holder
            FROM civicload_stage s
            LEFT JOIN LATERAL (
                SELECT d.municipality_id, d.document_type, d.meeting_name, d.meeting_date, p.page_number,
                       concat_ws(' ', o.subdomain, d.document_type, d.meeting_name, d.meeting_date::text, 'page', p.page_number::text) AS holder
                FROM meetings_meetingpage p
                JOIN meetings_meetingdocument d ON d.id = p.document_id
                JOIN municipalities_muni o ON o.id = d.municipality_id
                WHERE p.id = s.source_id
            ) h ON true
            WHERE char_length(s.meeting) > $3
               OR char_length(coalesce(s.page_image, '')) > $4
               OR (h.municipality_id IS NOT NULL
                   AND (h.municipality_id, h.document_type::text, h.meeting_name::text, h.meeting_date, h.page_number)
                       IS DISTINCT FROM ((SELECT id FROM muni), $2, s.meeting, s.meeting_date, s.page_number))
         ), recorded AS (
            INSERT INTO page_rejects (municipality_id, document_type, source_id, raw, reason, job_id)
            SELECT $5, $2, b.source_id,
                   jsonb_strip_nulls(jsonb_build_object('id', b.source_id, 'meeting', b.meeting, 'date', b.meeting_date,
                       'page', b.page_number, 'text', b.text, 'page_image', b.page_image, 'held_by', b.holder)),
                   b.reason, $6
            FROM bad b
            ON CONFLICT DO NOTHING
         ), gone AS (
            DELETE FROM civicload_stage s USING bad b WHERE s.source_id = b.source_id RETURNING 1
         )
         SELECT count(*) FROM gone",
    )
    .bind(&job.subdomain)
    .bind(job.document_type.as_str())
    .bind(schema.meeting_name_max.unwrap_or(i32::MAX))
    .bind(schema.page_image_max.unwrap_or(i32::MAX))
    .bind(job.municipality_id)
    .bind(job.job_id)
    .fetch_one(tx)
    .await
}

async fn upsert_documents(
    tx: &mut PgConnection,
    schema: &ObserverSchema,
    job: &JobKey,
) -> Result<(), sqlx::Error> {
    // G1 documents carry the name vector: civicload_name_vector is the application's
    // expression (CamelCase split, then the page vector's); a trigger of the application
    // that computes it anyway computes the same.
    let statement = match schema.generation {
        Generation::G1 => {
            "INSERT INTO meetings_meetingdocument (id, created, modified, municipality_id, meeting_name, meeting_date, document_type, meeting_name_search_vector)
             SELECT gen_random_uuid(), now(), now(), m.id, s.meeting, s.meeting_date, $2, civicload_name_vector(s.meeting)
             FROM (SELECT DISTINCT meeting, meeting_date FROM civicload_stage) s
             JOIN municipalities_muni m ON m.subdomain = $1
             WHERE NOT EXISTS (SELECT 1 FROM meetings_meetingdocument d WHERE d.municipality_id = m.id
                               AND d.meeting_name = s.meeting AND d.meeting_date = s.meeting_date AND d.document_type = $2)
             ON CONFLICT (municipality_id, meeting_name, meeting_date, document_type) DO NOTHING"
        }
        Generation::G2 => {
            "INSERT INTO meetings_meetingdocument (id, created, modified, municipality_id, meeting_name, meeting_date, document_type)
             SELECT gen_random_uuid(), now(), now(), m.id, s.meeting, s.meeting_date, $2
             FROM (SELECT DISTINCT meeting, meeting_date FROM civicload_stage) s
             JOIN municipalities_muni m ON m.subdomain = $1
             WHERE NOT EXISTS (SELECT 1 FROM meetings_meetingdocument d WHERE d.municipality_id = m.id
                               AND d.meeting_name = s.meeting AND d.meeting_date = s.meeting_date AND d.document_type = $2)
             ON CONFLICT (municipality_id, meeting_name, meeting_date, document_type) DO NOTHING"
        }
    };
    sql::query(statement)
        .bind(&job.subdomain)
        .bind(job.document_type.as_str())
        .execute(tx)
        .await?;
    Ok(())
}

/// Staged pages that take the place of a stored page with another id (a re-OCR: same
/// document and page number, new id): (old id, new id). The staged row keeps the old
/// page's `created` (the page did not newly arrive; its text changed).
async fn find_reocr(
    tx: &mut PgConnection,
    job: &JobKey,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sql::query_as(
        "UPDATE civicload_stage s SET keep_created = p.created
         FROM municipalities_muni m, meetings_meetingdocument d, meetings_meetingpage p
         WHERE m.subdomain = $1 AND d.municipality_id = m.id AND d.document_type = $2
           AND d.meeting_name = s.meeting AND d.meeting_date = s.meeting_date
           AND p.document_id = d.id AND p.page_number = s.page_number AND p.id <> s.source_id
         RETURNING p.id::text, s.source_id",
    )
    .bind(&job.subdomain)
    .bind(job.document_type.as_str())
    .fetch_all(tx)
    .await
}

/// Replaces pages by their re-OCR'd versions, in the caller's transaction: (old id, new
/// id) pairs. Removes the old pages and re-points every notebook entry of an old id at
/// the new one; a notebook that already holds the new page keeps that entry, with both
/// notes. The caller writes the new pages in the same transaction (the foreign keys are
/// deferred to its commit). Returns the pages removed.
pub async fn replace_reocr(
    tx: &mut PgConnection,
    pairs: &[(String, String)],
) -> Result<u64, sqlx::Error> {
    let old: Vec<&str> = pairs.iter().map(|p| p.0.as_str()).collect();
    let new: Vec<&str> = pairs.iter().map(|p| p.1.as_str()).collect();
    let removed: i64 = sql::query_scalar("SELECT observer_replace_reocr($1, $2)")
        .bind(&old)
        .bind(&new)
        .fetch_one(tx)
        .await?;
    Ok(removed as u64)
}

const JOB_PAGES: &str = "meetings_meetingpage p
     JOIN meetings_meetingdocument d ON d.id = p.document_id
     JOIN municipalities_muni m ON m.id = d.municipality_id
     WHERE m.subdomain = $1 AND d.document_type = $2";

/// Pages held for a job, and how many of them are kept for notebooks (gone upstream).
pub async fn count(pool: &PgPool, job: &JobKey) -> Result<StoredCount, sqlx::Error> {
    let statement = format!(
        "SELECT count(*), count(*) FILTER (WHERE EXISTS (SELECT 1 FROM observer_kept_pages k WHERE k.page_id = p.id))
         FROM {JOB_PAGES}"
    );
    let (stored, kept): (i64, i64) = sql::query_as(&statement)
        .bind(&job.subdomain)
        .bind(job.document_type.as_str())
        .fetch_one(autocommit(pool))
        .await?;
    Ok(StoredCount { stored, kept })
}

/// The ids of a job's pages, sorted.
pub async fn stored_ids(pool: &PgPool, job: &JobKey) -> Result<Vec<String>, sqlx::Error> {
    let statement = format!("SELECT p.id::text FROM {JOB_PAGES} ORDER BY p.id");
    sql::query_scalar(&statement)
        .bind(&job.subdomain)
        .bind(job.document_type.as_str())
        .fetch_all(autocommit(pool))
        .await
}

/// Of a job's stale ids (stored, gone upstream), those notebook entries reference, with
/// their entry counts: recorded in `observer_kept_pages` (and the job's other kept rows
/// dropped), so a count-based verification knows them.
pub async fn note_kept(
    pool: &PgPool,
    job: &JobKey,
    stale: &[String],
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let kept: Vec<(String, i64)> = sql::query_as(
        "SELECT e.meeting_page_id::text, count(*) FROM notebooks_notebookentry e
         WHERE e.meeting_page_id = ANY($1) GROUP BY 1 ORDER BY 1",
    )
    .bind(stale)
    .fetch_all(&mut *tx)
    .await?;
    let ids: Vec<&str> = kept.iter().map(|k| k.0.as_str()).collect();
    let counts: Vec<i32> = kept.iter().map(|k| k.1 as i32).collect();
    sql::query(
        "DELETE FROM observer_kept_pages WHERE municipality_id = $1 AND document_type = $2
         AND NOT (page_id = ANY($3))",
    )
    .bind(job.municipality_id)
    .bind(job.document_type.as_str())
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    sql::query(
        "INSERT INTO observer_kept_pages (page_id, municipality_id, document_type, entries)
         SELECT id, $1, $2, n FROM unnest($3::text[], $4::int[]) AS t(id, n)
         ON CONFLICT (page_id) DO UPDATE SET entries = EXCLUDED.entries",
    )
    .bind(job.municipality_id)
    .bind(job.document_type.as_str())
    .bind(&ids)
    .bind(&counts)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(kept)
}

/// Removes a job's stale pages (and documents left without pages) in one transaction,
/// except pages that notebook entries reference: those are kept and recorded.
pub async fn delete_stale(
    pool: &PgPool,
    job: &JobKey,
    ids: &[String],
) -> Result<StaleOutcome, sqlx::Error> {
    let kept = note_kept(pool, job, ids).await?;
    let deleted = delete_unreferenced(pool, job, ids).await?;
    Ok(StaleOutcome { deleted, kept })
}

/// Removes those of a job's pages `ids` that no notebook entry references (and documents
/// left without pages), in one transaction; returns the pages removed. A page an entry
/// references stays (the caller records it with `note_kept`).
pub async fn delete_unreferenced(
    pool: &PgPool,
    job: &JobKey,
    ids: &[String],
) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let docs: Vec<String> = sql::query_scalar(
        "DELETE FROM meetings_meetingpage p USING meetings_meetingdocument d, municipalities_muni m
         WHERE d.id = p.document_id AND m.id = d.municipality_id AND m.subdomain = $1
           AND d.document_type = $2 AND p.id = ANY($3)
           AND NOT EXISTS (SELECT 1 FROM notebooks_notebookentry e WHERE e.meeting_page_id = p.id)
         RETURNING p.document_id::text",
    )
    .bind(&job.subdomain)
    .bind(job.document_type.as_str())
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    sql::query(
        "DELETE FROM meetings_meetingdocument d WHERE d.id = ANY($1::uuid[])
         AND NOT EXISTS (SELECT 1 FROM meetings_meetingpage p WHERE p.document_id = d.id)",
    )
    .bind(&docs)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(docs.len() as u64)
}

/// Every page kept for notebooks: (subdomain, document type, page id, entries).
pub async fn kept_pages(pool: &PgPool) -> Result<Vec<(String, String, String, i32)>, sqlx::Error> {
    sql::query_as(
        "SELECT m.subdomain, k.document_type, k.page_id, k.entries
         FROM observer_kept_pages k JOIN municipalities m ON m.id = k.municipality_id
         WHERE EXISTS (SELECT 1 FROM meetings_meetingpage p WHERE p.id = k.page_id)
         ORDER BY 1, 2, 3",
    )
    .fetch_all(autocommit(pool))
    .await
}

/// The `transform::page_key`s of a job's pages whose id sorts at or before `cursor`
/// (bytewise, like the source's `_sort=id`): what a resumed pass has seen already.
pub async fn page_keys_through(
    pool: &PgPool,
    job: &JobKey,
    cursor: &str,
) -> Result<std::collections::HashSet<u64>, sqlx::Error> {
    page_keys_where(pool, job, |id| id.as_bytes() <= cursor.as_bytes()).await
}

/// The `transform::page_key`s of a job's pages but those with an id in `except` (see
/// `store::refresh::page_keys_except`).
pub async fn page_keys_except(
    pool: &PgPool,
    job: &JobKey,
    except: &std::collections::HashSet<&str>,
) -> Result<std::collections::HashSet<u64>, sqlx::Error> {
    page_keys_where(pool, job, |id| !except.contains(id)).await
}

async fn page_keys_where(
    pool: &PgPool,
    job: &JobKey,
    keep: impl Fn(&str) -> bool,
) -> Result<std::collections::HashSet<u64>, sqlx::Error> {
    let statement = format!(
        "SELECT p.id::text, d.meeting_name::text, (d.meeting_date - date '1970-01-01'), p.page_number FROM {JOB_PAGES}"
    );
    let rows: Vec<(String, String, i32, i32)> = sql::query_as(&statement)
        .bind(&job.subdomain)
        .bind(job.document_type.as_str())
        .fetch_all(autocommit(pool))
        .await?;
    Ok(rows
        .iter()
        .filter(|r| keep(&r.0))
        .map(|(_, meeting, date, page)| crate::transform::page_key(meeting, *date, *page))
        .collect())
}
