//! `page_rejects`: rows that could not be stored as pages, with the reason, counted by
//! verification.

use sqlx::PgConnection;

use crate::batch::{JobKey, Reject};
use crate::store::sql;

/// Records a batch's rejects in the batch's transaction (a reject met again is kept once).
pub async fn insert(
    conn: &mut PgConnection,
    job: &JobKey,
    rejects: &[Reject],
) -> Result<(), sqlx::Error> {
    let ids: Vec<Option<&str>> = rejects.iter().map(|r| r.source_id.as_deref()).collect();
    let raws: Vec<&str> = rejects.iter().map(|r| r.raw.as_str()).collect();
    let reasons: Vec<&str> = rejects.iter().map(|r| r.reason.as_str()).collect();
    sql::query(
        "INSERT INTO page_rejects (municipality_id, document_type, source_id, raw, reason, job_id)
         SELECT $1, $2, s, r::jsonb, why, $3 FROM unnest($4::text[], $5::text[], $6::text[]) AS t(s, r, why)
         ON CONFLICT DO NOTHING",
    )
    .bind(job.municipality_id)
    .bind(job.document_type.as_str())
    .bind(job.job_id)
    .bind(&ids)
    .bind(&raws)
    .bind(&reasons)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
