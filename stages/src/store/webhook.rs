//! civic.band's webhook in the database: the municipality is upserted and a refresh of
//! each of its jobs queued, in ONE transaction, before the webhook is answered; a webhook
//! answered 2xx is therefore never lost, whatever happens to the process after.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::sql;
use crate::batch::DocumentType;

/// The municipality fields a webhook sends; None = not sent (the stored value stays).
#[derive(Clone, Debug, Default)]
pub struct MuniUpdate {
    pub subdomain: String,
    pub name: String,
    pub state: Option<String>,
    pub country: Option<String>,
    pub kind: Option<String>,
    pub pages: Option<i64>,
    pub last_updated: Option<DateTime<Utc>>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub popup_data: Option<serde_json::Value>,
}

/// The municipality as stored after the webhook, as the application answers it.
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize)]
pub struct Muni {
    pub id: i64,
    pub subdomain: String,
    pub name: Option<String>,
    pub state: Option<String>,
    pub country: Option<String>,
    pub kind: Option<String>,
    pub pages: Option<i64>,
    pub last_updated: Option<DateTime<Utc>>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub popup_data: Option<serde_json::Value>,
    #[serde(skip)]
    pub created: bool,
}

/// Upserts the municipality, registers its jobs and queues a refresh of each, in one
/// transaction. Returns the stored municipality and whether it was new. With
/// `--target civic-observer` (`observer`: the tables' generation) the application's
/// `municipalities_muni` is upserted in the same transaction (check the values with
/// `observer::municipalities::unfit_sites` first).
pub async fn upsert_and_queue(
    pool: &PgPool,
    m: &MuniUpdate,
    observer: Option<crate::target::Generation>,
) -> Result<Muni, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let muni: Muni = sql::query_as(
        "INSERT INTO municipalities AS t
            (subdomain, name, state, country, kind, pages, last_updated, latitude, longitude, popup_data)
         VALUES ($1, $2, $3, coalesce($4, 'US'), $5, $6, $7, $8, $9, $10)
         ON CONFLICT (subdomain) DO UPDATE SET name = EXCLUDED.name,
            state = coalesce($3, t.state), country = coalesce($4, t.country),
            kind = coalesce($5, t.kind), pages = coalesce($6, t.pages),
            last_updated = coalesce($7, t.last_updated), latitude = coalesce($8, t.latitude),
            longitude = coalesce($9, t.longitude), popup_data = coalesce($10, t.popup_data),
            updated_at = now()
         RETURNING id, subdomain, name, state, country, kind, pages, last_updated, latitude,
            longitude, popup_data, (xmax = 0) AS created",
    )
    .bind(&m.subdomain)
    .bind(&m.name)
    .bind(&m.state)
    .bind(&m.country)
    .bind(&m.kind)
    .bind(m.pages)
    .bind(m.last_updated)
    .bind(m.latitude)
    .bind(m.longitude)
    .bind(&m.popup_data)
    .fetch_one(&mut *tx)
    .await?;
    if let Some(generation) = observer {
        super::observer::municipalities::upsert_from_webhook(&mut tx, generation, muni.id).await?;
    }
    let types: Vec<&str> = DocumentType::ALL.iter().map(|d| d.as_str()).collect();
    sql::query(
        "INSERT INTO backfill_jobs (municipality_id, document_type)
         SELECT $1, d FROM unnest($2::text[]) AS t(d)
         ON CONFLICT (municipality_id, document_type) DO NOTHING",
    )
    .bind(muni.id)
    .bind(&types)
    .execute(&mut *tx)
    .await?;
    sql::query(
        "UPDATE backfill_jobs SET refresh_requested = refresh_requested + 1,
            refresh_requested_at = coalesce(refresh_requested_at, now()),
            refresh_last_requested_at = now(), refresh_not_before = NULL, updated_at = now()
         WHERE municipality_id = $1",
    )
    .bind(muni.id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(muni)
}
