//! civic-observer's `municipalities_muni`, written from civic.band's sites list: upsert by
//! subdomain, a UUID for a new row, `modified` only when something changed; in G2 the
//! pages' denormalised municipality columns follow a changed name or state.

use sqlx::PgPool;

use crate::store::municipalities::Site;
use crate::store::observer::types::Generation;
use crate::store::sql::{self, autocommit};

/// Reads one field of a site.
type Field = fn(&Site) -> Option<&str>;

/// The widths of `municipalities_muni`'s columns (CIVIC_OBSERVER.md), in characters.
const WIDTHS: [(&str, usize, Field); 5] = [
    ("subdomain", 100, |s| Some(s.subdomain.as_str())),
    ("name", 200, |s| s.name.as_deref()),
    ("state", 10, |s| s.state.as_deref()),
    ("country", 255, |s| s.country.as_deref()),
    ("kind", 255, |s| s.kind.as_deref()),
];

/// Sites whose values `municipalities_muni` cannot hold, each with why (nothing is
/// truncated: such a site is not written, and the caller says so).
pub fn unfit_sites(sites: &[Site]) -> Vec<(String, String)> {
    let mut unfit = Vec::new();
    for site in sites {
        for (column, width, get) in WIDTHS {
            if get(site).is_some_and(|v| v.chars().count() > width) {
                let why = format!("its {column} is longer than municipalities_muni.{column} holds ({width} characters)");
                unfit.push((site.subdomain.clone(), why));
            }
        }
    }
    unfit
}

/// Upserts the sites into `municipalities_muni`; returns (inserted, updated). A field the
/// sites list leaves empty keeps the application's value. Give it only sites that
/// `unfit_sites` passes.
pub async fn upsert_sites(
    pool: &PgPool,
    generation: Generation,
    sites: &[Site],
) -> Result<(u64, u64), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let (mut inserted, mut updated) = (0, 0);
    for chunk in sites.chunks(1000) {
        let col = |f: fn(&Site) -> Option<String>| chunk.iter().map(f).collect::<Vec<_>>();
        let subdomains: Vec<String> = chunk.iter().map(|s| s.subdomain.clone()).collect();
        let pages: Vec<Option<i64>> = chunk.iter().map(|s| s.pages).collect();
        let last_updated: Vec<_> = chunk.iter().map(|s| s.last_updated).collect();
        let (ins, changed): (i64, Vec<String>) = sql::query_as(
            "WITH input AS (
                SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::timestamptz[])
                    AS t(subdomain, name, state, country, kind, pages, last_updated)
             ), changed AS (
                UPDATE municipalities_muni o SET
                    name = coalesce(i.name, o.name), state = coalesce(i.state, o.state),
                    country = coalesce(i.country, o.country), kind = coalesce(i.kind, o.kind),
                    pages = coalesce(i.pages, o.pages), last_updated = coalesce(i.last_updated, o.last_updated),
                    modified = now()
                FROM input i
                WHERE o.subdomain = i.subdomain
                  AND (o.name, o.state, o.country, o.kind, o.pages, o.last_updated) IS DISTINCT FROM
                      (coalesce(i.name, o.name), coalesce(i.state, o.state), coalesce(i.country, o.country),
                       coalesce(i.kind, o.kind), coalesce(i.pages, o.pages)::int, coalesce(i.last_updated, o.last_updated))
                RETURNING o.id::text
             ), added AS (
                INSERT INTO municipalities_muni (id, created, modified, subdomain, name, state, country, kind, pages, last_updated)
                SELECT gen_random_uuid(), now(), now(), i.subdomain, coalesce(i.name, i.subdomain), coalesce(i.state, ''),
                       coalesce(i.country, 'US'), coalesce(i.kind, ''), coalesce(i.pages, 0), i.last_updated
                FROM input i
                WHERE NOT EXISTS (SELECT 1 FROM municipalities_muni o WHERE o.subdomain = i.subdomain)
                ON CONFLICT (subdomain) DO NOTHING
                RETURNING 1
             )
             SELECT (SELECT count(*) FROM added), coalesce((SELECT array_agg(id) FROM changed), '{}')",
        )
        .bind(&subdomains)
        .bind(col(|s| s.name.clone()))
        .bind(col(|s| s.state.clone()))
        .bind(col(|s| s.country.clone()))
        .bind(col(|s| s.kind.clone()))
        .bind(&pages)
        .bind(&last_updated)
        .fetch_one(&mut *tx)
        .await?;
        inserted += ins as u64;
        updated += changed.len() as u64;
        if generation == Generation::G2 && !changed.is_empty() {
            refresh_denormalised(&mut tx, &changed).await?;
        }
    }
    tx.commit().await?;
    Ok((inserted, updated))
}

/// G2: the pages of these municipalities (ids as text) take their current subdomain, name
/// and state; only pages that differ are written.
pub async fn refresh_denormalised(
    conn: &mut sqlx::PgConnection,
    municipality_ids: &[String],
) -> Result<u64, sqlx::Error> {
    let r = sql::query(
        "UPDATE meetings_meetingpage p
         SET municipality_id = o.id, municipality_subdomain = o.subdomain, municipality_name = o.name,
             state = o.state, modified = now()
         FROM meetings_meetingdocument d, municipalities_muni o
         WHERE o.id = ANY($1::uuid[]) AND d.municipality_id = o.id AND p.document_id = d.id
           AND (p.municipality_id, p.municipality_subdomain, p.municipality_name, p.state)
               IS DISTINCT FROM (o.id, o.subdomain::text, o.name::text, o.state::text)",
    )
    .bind(municipality_ids)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

/// Gives every municipality civicload knows (its own `municipalities`) a row in
/// `municipalities_muni`, so a backfill of a subdomain that was never synced has one.
pub async fn ensure_known(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let r = sql::query(
        "INSERT INTO municipalities_muni (id, created, modified, subdomain, name, state, country, kind, pages)
         SELECT gen_random_uuid(), now(), now(), m.subdomain, coalesce(m.name, m.subdomain), coalesce(m.state, ''),
                coalesce(m.country, 'US'), coalesce(m.kind, ''), coalesce(m.pages, 0)::int
         FROM municipalities m
         WHERE NOT EXISTS (SELECT 1 FROM municipalities_muni o WHERE o.subdomain = m.subdomain)
         ON CONFLICT (subdomain) DO NOTHING",
    )
    .execute(autocommit(pool))
    .await?;
    Ok(r.rows_affected())
}

/// civic.band's webhook in civic-observer's `municipalities_muni`, as the application's
/// own webhook writes it, in the webhook's transaction: the municipality civicload just
/// upserted (its own `municipalities` row `municipality_id`) is upserted by subdomain (a
/// UUID for a new row), `modified` only when something changed; in G2 the pages'
/// denormalised columns follow a changed name or state. Check the values with
/// `unfit_sites` first (nothing is truncated).
pub async fn upsert_from_webhook(
    conn: &mut sqlx::PgConnection,
    generation: Generation,
    municipality_id: i64,
) -> Result<(), sqlx::Error> {
    let changed: Option<String> = sql::query_scalar(
        "WITH i AS (
            SELECT subdomain, coalesce(name, subdomain) AS name, state, country, kind, pages::int AS pages,
                   last_updated, latitude, longitude, popup_data
            FROM municipalities WHERE id = $1
         ), changed AS (
            UPDATE municipalities_muni o SET name = i.name, state = coalesce(i.state, o.state),
                country = coalesce(i.country, o.country), kind = coalesce(i.kind, o.kind),
                pages = coalesce(i.pages, o.pages), last_updated = coalesce(i.last_updated, o.last_updated),
                latitude = coalesce(i.latitude, o.latitude), longitude = coalesce(i.longitude, o.longitude),
                popup_data = coalesce(i.popup_data, o.popup_data), modified = now()
            FROM i
            WHERE o.subdomain = i.subdomain
              AND (o.name, o.state, o.country, o.kind, o.pages, o.last_updated, o.latitude, o.longitude, o.popup_data)
                  IS DISTINCT FROM (i.name, coalesce(i.state, o.state), coalesce(i.country, o.country),
                   coalesce(i.kind, o.kind), coalesce(i.pages, o.pages), coalesce(i.last_updated, o.last_updated),
                   coalesce(i.latitude, o.latitude), coalesce(i.longitude, o.longitude),
                   coalesce(i.popup_data, o.popup_data))
            RETURNING o.id::text
         ), added AS (
            INSERT INTO municipalities_muni (id, created, modified, subdomain, name, state, country, kind, pages,
                last_updated, latitude, longitude, popup_data)
            SELECT gen_random_uuid(), now(), now(), i.subdomain, i.name, coalesce(i.state, ''),
                   coalesce(i.country, 'US'), coalesce(i.kind, ''), coalesce(i.pages, 0), i.last_updated,
                   i.latitude, i.longitude, i.popup_data
            FROM i
            WHERE NOT EXISTS (SELECT 1 FROM municipalities_muni o WHERE o.subdomain = i.subdomain)
            ON CONFLICT (subdomain) DO NOTHING
         )
         SELECT id FROM changed",
    )
    .bind(municipality_id)
    .fetch_optional(&mut *conn)
    .await?;
    if let (Generation::G2, Some(id)) = (generation, changed) {
        refresh_denormalised(conn, &[id]).await?;
    }
    Ok(())
}
