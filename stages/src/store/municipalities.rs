//! The `municipalities` table: the list of sources and their expected page counts.

use super::sql::{self, autocommit};
use sqlx::PgPool;

/// A municipality as listed in civic.band's `sites` table.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Site {
    pub subdomain: String,
    pub name: Option<String>,
    pub state: Option<String>,
    pub country: Option<String>,
    pub kind: Option<String>,
    pub pages: Option<i64>,
    /// When civic.band last rebuilt the site (`last_updated`), when the list says.
    #[serde(default)]
    pub last_updated: Option<chrono::DateTime<chrono::Utc>>,
}

/// A registered municipality.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Municipality {
    pub id: i64,
    pub subdomain: String,
    pub pages: Option<i64>,
}

/// Registers a subdomain if it is new; returns its id.
pub async fn ensure(pool: &PgPool, subdomain: &str) -> Result<i64, sqlx::Error> {
    sql::query_scalar(
        "INSERT INTO municipalities (subdomain) VALUES ($1)
         ON CONFLICT (subdomain) DO UPDATE SET subdomain = EXCLUDED.subdomain
         RETURNING id",
    )
    .bind(subdomain)
    .fetch_one(autocommit(pool))
    .await
}

/// Inserts or updates sites; returns (inserted, updated).
pub async fn upsert_sites(pool: &PgPool, sites: &[Site]) -> Result<(u64, u64), sqlx::Error> {
    let mut inserted = 0;
    let mut updated = 0;
    let mut tx = pool.begin().await?;
    for chunk in sites.chunks(1000) {
        let col = |f: fn(&Site) -> Option<String>| chunk.iter().map(f).collect::<Vec<_>>();
        let subdomains: Vec<String> = chunk.iter().map(|s| s.subdomain.clone()).collect();
        let pages: Vec<Option<i64>> = chunk.iter().map(|s| s.pages).collect();
        let rows: Vec<bool> = sql::query_scalar(
            "INSERT INTO municipalities (subdomain, name, state, country, kind, pages)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[])
             ON CONFLICT (subdomain) DO UPDATE SET
                name = EXCLUDED.name, state = EXCLUDED.state, country = EXCLUDED.country,
                kind = EXCLUDED.kind, pages = EXCLUDED.pages, updated_at = now()
             RETURNING (xmax = 0)",
        )
        .bind(&subdomains)
        .bind(col(|s| s.name.clone()))
        .bind(col(|s| s.state.clone()))
        .bind(col(|s| s.country.clone()))
        .bind(col(|s| s.kind.clone()))
        .bind(&pages)
        .fetch_all(&mut *tx)
        .await?;
        inserted += rows.iter().filter(|c| **c).count() as u64;
        updated += rows.iter().filter(|c| !**c).count() as u64;
    }
    tx.commit().await?;
    Ok((inserted, updated))
}

/// Every registered municipality, biggest expected first.
pub async fn all(pool: &PgPool) -> Result<Vec<Municipality>, sqlx::Error> {
    sql::query_as(
        "SELECT id, subdomain, pages FROM municipalities ORDER BY pages DESC NULLS LAST, subdomain",
    )
    .fetch_all(autocommit(pool))
    .await
}

/// Reads a sites list from a CSV file (header row) or JSON (an array of objects, or a
/// Datasette answer with `rows`).
pub fn parse_sites(text: &str, name: &str) -> Result<Vec<Site>, String> {
    let trimmed = text.trim_start();
    let sites: Vec<Site> = if trimmed.starts_with('[') || trimmed.starts_with('{') {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Doc {
            List(Vec<RawSite>),
            Datasette { rows: Vec<RawSite> },
        }
        let doc: Doc =
            serde_json::from_str(trimmed).map_err(|e| format!("not a JSON list of sites: {e}"))?;
        let rows = match doc {
            Doc::List(r) | Doc::Datasette { rows: r } => r,
        };
        rows.into_iter()
            .map(RawSite::into_site)
            .collect::<Result<_, _>>()?
    } else {
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let mut out = Vec::new();
        for (i, rec) in reader.deserialize::<RawSite>().enumerate() {
            let rec = rec.map_err(|e| format!("{name} line {}: {e}", i + 2))?;
            out.push(rec.into_site()?);
        }
        out
    };
    Ok(sites)
}

/// A site row as found in files: `pages` may be text, empty fields mean unknown.
#[derive(serde::Deserialize)]
pub struct RawSite {
    subdomain: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    country: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    pages: Option<serde_json::Value>,
    #[serde(default)]
    last_updated: Option<String>,
}

/// A `last_updated` as civic.band writes it: a timestamp (with or without zone, `T` or a
/// space) or a date; anything else is unknown.
fn parse_last_updated(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::{NaiveDate, NaiveDateTime};
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&chrono::Utc));
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

impl RawSite {
    pub fn into_site(self) -> Result<Site, String> {
        let sub = self.subdomain.trim().to_ascii_lowercase();
        if sub.is_empty() {
            return Err("a site has an empty subdomain".into());
        }
        let pages = match self.pages {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Number(n)) => n.as_i64(),
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => None,
            Some(serde_json::Value::String(s)) => Some(
                s.trim()
                    .parse()
                    .map_err(|_| format!("{sub}: pages {s:?} is not a number"))?,
            ),
            Some(other) => return Err(format!("{sub}: pages {other} is not a number")),
        };
        let clean = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        Ok(Site {
            subdomain: sub,
            name: clean(self.name),
            state: clean(self.state),
            country: clean(self.country),
            kind: clean(self.kind),
            pages,
            last_updated: self.last_updated.as_deref().and_then(parse_last_updated),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_parse_from_csv_and_json() {
        let csv = "subdomain,name,state,country,kind,pages\noakland.ca,Oakland,CA,US,city,120\nalameda.ca,Alameda,CA,US,city,\n";
        let s = parse_sites(csv, "f.csv").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].pages, Some(120));
        assert_eq!(s[1].pages, None);
        let json = r#"[{"subdomain":"Oakland.CA","pages":"7"}]"#;
        assert_eq!(
            parse_sites(json, "f.json").unwrap()[0].subdomain,
            "oakland.ca"
        );
        let ds = r#"{"ok":true,"rows":[{"subdomain":"x.ca","pages":3}]}"#;
        assert_eq!(parse_sites(ds, "u").unwrap()[0].pages, Some(3));
    }
}
