//! civicload's own `meeting_documents` and `meeting_pages`: how one batch's pages are
//! written inside the batch's transaction (the load stage chooses the route; see
//! `load`'s module comment): the insert route COPYs straight into `meeting_pages`, the
//! upsert route COPYs into a staging table and upserts from it.

use std::collections::HashMap;

use arrow_array::cast::AsArray;
use arrow_array::types::Date32Type;
use sqlx::PgConnection;

use crate::batch::{col, PageBatch};
use crate::copy::{CopyRows, RowKey, PAGES_COLUMNS, STAGING_COLUMNS};
use crate::store::sql;
use crate::watchdog::{Pulse, Stage, Step};

/// Starts a batch's transaction: sets `setting` (how the search-vector trigger treats the
/// batch's rows, migration 0004) for this transaction and returns the backend's pid, which
/// the watchdog cancels if the batch stalls. One round trip.
pub async fn begin_batch(conn: &mut PgConnection, setting: &str) -> Result<i32, sqlx::Error> {
    sql::query_scalar("SELECT pg_backend_pid() FROM set_config($1, 'on', true)")
        .bind(setting)
        .fetch_one(&mut *conn)
        .await
}

/// The upsert route: the batch's rows go into a temporary staging table (dropped at
/// commit), then documents and pages are upserted from it. Returns the pages created and
/// updated; a page whose columns are all unchanged is not written.
pub async fn upsert_batch(
    conn: &mut PgConnection,
    batch: &PageBatch,
    pulse: &Pulse,
) -> Result<(i64, i64), sqlx::Error> {
    let job = &batch.job;
    let doc_type = job.document_type.as_str();
    sql::query(
        "CREATE TEMP TABLE civicload_stage (
            source_id text, meeting text, meeting_date date, page_number int,
            text text, page_image text, entities jsonb, votes jsonb, search_vector tsvector,
            phrase_keys int4[]
         ) ON COMMIT DROP",
    )
    .execute(&mut *conn)
    .await?;
    pulse.step(Stage::Load, Step::Copy);
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY civicload_stage ({STAGING_COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let rows = CopyRows::new(&batch.rows, batch.vectors.as_deref(), RowKey::Meeting);
    if let Err(e) = send_rows(&mut copy, &rows, pulse).await {
        let _ = copy.abort("sending the rows failed").await;
        return Err(e);
    }
    copy.finish().await?;
    pulse.step(Stage::Load, Step::Upsert);

    sql::query(
        "INSERT INTO meeting_documents (municipality_id, document_type, meeting_name, meeting_date)
         SELECT DISTINCT $1::bigint, $2::text, meeting, meeting_date FROM civicload_stage
         ON CONFLICT (municipality_id, document_type, meeting_name, meeting_date) DO NOTHING",
    )
    .bind(job.municipality_id)
    .bind(doc_type)
    .execute(&mut *conn)
    .await?;

    let (created, updated): (i64, i64) = sql::query_as(
        "WITH written AS (
            INSERT INTO meeting_pages AS p
                (document_id, municipality_id, source_id, page_number, text, page_image, entities, votes, search_vector, meeting_date, phrase_keys)
            SELECT d.id, $1, s.source_id, s.page_number, s.text, s.page_image, s.entities, s.votes, s.search_vector, d.meeting_date, s.phrase_keys
            FROM civicload_stage s
            JOIN meeting_documents d
              ON d.municipality_id = $1 AND d.document_type = $2
             AND d.meeting_name = s.meeting AND d.meeting_date = s.meeting_date
            -- + municipality_id: the partition key (migration 0010); the document
            -- determines it, so the same rows conflict as before.
            ON CONFLICT (document_id, page_number, municipality_id) DO UPDATE SET
                source_id = EXCLUDED.source_id, text = EXCLUDED.text,
                page_image = EXCLUDED.page_image, entities = EXCLUDED.entities,
                votes = EXCLUDED.votes, updated_at = now(),
                search_vector = CASE WHEN p.text IS DISTINCT FROM EXCLUDED.text
                                     THEN EXCLUDED.search_vector ELSE p.search_vector END,
                phrase_keys = CASE WHEN p.text IS DISTINCT FROM EXCLUDED.text
                                   THEN EXCLUDED.phrase_keys ELSE p.phrase_keys END
            WHERE (p.source_id, p.text, p.page_image, p.entities, p.votes)
                  IS DISTINCT FROM
                  (EXCLUDED.source_id, EXCLUDED.text, EXCLUDED.page_image, EXCLUDED.entities, EXCLUDED.votes)
            -- Not xmax = 0: a partitioned table (migration 0010) cannot return system
            -- columns. A row this statement inserted has created_at = now() (the
            -- column default, this transaction's start); an updated one is older.
            RETURNING (p.created_at = now()) AS created
         )
         SELECT count(*) FILTER (WHERE created), count(*) FILTER (WHERE NOT created) FROM written",
    )
    .bind(job.municipality_id)
    .bind(doc_type)
    .fetch_one(&mut *conn)
    .await?;
    Ok((created, updated))
}

/// The insert route: the batch's documents are upserted (returning their ids), then its
/// pages are COPYed straight into `meeting_pages`. Returns the pages created, or None when
/// the batch must take the upsert route instead (in the same transaction). A page that is
/// stored already fails the COPY with a unique violation (the caller upserts instead).
/// With `skip_fk_checks` the COPY alone runs as a replica session: unique indexes, NOT
/// NULL and CHECK constraints still hold, the search-vector trigger still fires (ENABLE
/// ALWAYS, migration 0008), only the foreign-key triggers are skipped.
pub async fn insert_batch(
    conn: &mut PgConnection,
    batch: &PageBatch,
    skip_fk_checks: bool,
    pulse: &Pulse,
) -> Result<Option<i64>, sqlx::Error> {
    pulse.step(Stage::Load, Step::Documents);
    let job = &batch.job;
    let Some(document_ids) = document_ids(conn, batch).await? else {
        return Ok(None);
    };
    if skip_fk_checks {
        sql::query("SET LOCAL session_replication_role = replica")
            .execute(&mut *conn)
            .await?;
    }
    pulse.step(Stage::Load, Step::Copy);
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY meeting_pages ({PAGES_COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let key = RowKey::Document {
        municipality_id: job.municipality_id,
        document_ids: &document_ids,
    };
    let rows = CopyRows::new(&batch.rows, batch.vectors.as_deref(), key);
    if let Err(e) = send_rows(&mut copy, &rows, pulse).await {
        let _ = copy.abort("sending the rows failed").await;
        return Err(e);
    }
    let copied = copy.finish().await? as i64;
    if skip_fk_checks {
        // The rejects and the checkpoint that follow keep their foreign-key checks.
        sql::query("SET LOCAL session_replication_role = origin")
            .execute(&mut *conn)
            .await?;
    }
    Ok(Some(copied))
}

/// The insert route's documents: the batch's distinct meetings upserted, and each row's
/// document id. None when a document is newer than the statement's snapshot (the batch
/// then takes the upsert route).
async fn document_ids(
    conn: &mut PgConnection,
    batch: &PageBatch,
) -> Result<Option<Vec<i64>>, sqlx::Error> {
    let job = &batch.job;
    let meetings = batch.rows.column(col::MEETING).as_string::<i32>();
    let dates = batch.rows.column(col::DATE).as_primitive::<Date32Type>();
    // The batch's distinct (meeting, date) pairs, in first-seen order.
    let mut ids: HashMap<(&str, i32), Option<i64>> = HashMap::new();
    let (mut names, mut days) = (Vec::new(), Vec::new());
    for i in 0..batch.rows.num_rows() {
        let key = (meetings.value(i), dates.value(i));
        if ids.insert(key, None).is_none() {
            names.push(key.0);
            days.push(key.1);
        }
    }
    // New documents come back from the INSERT; the others from the table (the statement's
    // snapshot does not see its own inserts, so each document comes back exactly once).
    let found: Vec<(i64, String, i32)> = sql::query_as(
        "WITH wanted AS (
            SELECT m, date '1970-01-01' + d AS day FROM unnest($3::text[], $4::int[]) AS t(m, d)
         ), added AS (
            INSERT INTO meeting_documents (municipality_id, document_type, meeting_name, meeting_date)
            SELECT $1, $2, m, day FROM wanted
            ON CONFLICT (municipality_id, document_type, meeting_name, meeting_date) DO NOTHING
            RETURNING id, meeting_name, meeting_date
         )
         SELECT id, meeting_name, meeting_date - date '1970-01-01' FROM added
         UNION ALL
         SELECT d.id, d.meeting_name, d.meeting_date - date '1970-01-01'
         FROM meeting_documents d JOIN wanted w
           ON d.municipality_id = $1 AND d.document_type = $2
          AND d.meeting_name = w.m AND d.meeting_date = w.day",
    )
    .bind(job.municipality_id)
    .bind(job.document_type.as_str())
    .bind(&names)
    .bind(&days)
    .fetch_all(&mut *conn)
    .await?;
    for (id, name, day) in &found {
        if let Some(slot) = ids.get_mut(&(name.as_str(), *day)) {
            *slot = Some(*id);
        }
    }
    let mut document_ids = Vec::with_capacity(batch.rows.num_rows());
    for i in 0..batch.rows.num_rows() {
        match ids[&(meetings.value(i), dates.value(i))] {
            Some(id) => document_ids.push(id),
            // Committed by a transaction newer than this statement's snapshot (a replay
            // beside the backfill): the upsert's join sees it.
            None => return Ok(None),
        }
    }
    Ok(Some(document_ids))
}

/// Sends a COPY stream in chunks of about `COPY_CHUNK` bytes, encoding as it goes.
/// Each chunk the server accepted is progress for the watchdog.
pub async fn send_rows(
    copy: &mut sqlx::postgres::PgCopyIn<&mut PgConnection>,
    rows: &CopyRows<'_>,
    pulse: &Pulse,
) -> Result<(), sqlx::Error> {
    const COPY_CHUNK: usize = 256 * 1024;
    let mut out = bytes::BytesMut::with_capacity(COPY_CHUNK + 16 * 1024);
    rows.header(&mut out);
    for i in 0..rows.len() {
        rows.row(i, &mut out);
        if out.len() >= COPY_CHUNK {
            copy.send(out.split().freeze()).await?;
            pulse.beat(Stage::Load);
        }
    }
    rows.trailer(&mut out);
    copy.send(out.freeze()).await?;
    Ok(())
}
