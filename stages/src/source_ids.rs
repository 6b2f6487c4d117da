//! A table's id set, read with ids only (never text), by the cheapest exact route the
//! source offers: what `refresh` and `verify --deep` compare with PostgreSQL.
//!
//! Measured against Datasette 1.0a28 (fixtures, README "Refresh"), per 1,000 ids:
//! - streamed CSV of the id column alone (`.csv?_stream=on&_sort=id&_nocol=...`): ~14 KB,
//!   and ONE request for the whole table, whatever its size;
//! - keyset JSON pages (`_col=id&_shape=arrayfirst&id__gt=`): ~16 KB, one request per
//!   1,000 ids (`_col=id` with object rows: ~24 KB);
//! - the SQL endpoint: the same 1,000 rows per request as keyset (`max_returned_rows`),
//!   and it may be disabled, so it brings nothing over keyset.
//!
//! But time decides: Datasette streams a CSV by re-running the whole table view for every
//! 1,000 rows (counts included), ~0.25 s per 1,000 ids against ~0.05 s for a keyset page
//! (33,767 ids: 8.1 s against 1.8 s; a 2,800-row table: 0.57 s against 0.03 s), and that
//! time is the source's CPU. So keyset `arrayfirst` pages first: 14% more bytes than the
//! CSV on the id read alone (still under 1% of a full pass), a quarter of the source's
//! time, and for most tables a single request. The CSV stream is the fallback when keyset
//! pages fail. Each answer is checked: ids strictly ascending and after the cursor, and
//! the CSV's row count against an exact count when one is at hand, so a stream cut short
//! is never taken for the table.

use reqwest::Url;

use crate::source::{SourceClient, SourceError, TableInfo};

use crate::usage::table_key;

/// Which route read an id set (recorded on the job as `id_route`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdRoute {
    CsvStream,
    KeysetJson,
}

impl IdRoute {
    pub fn as_str(self) -> &'static str {
        match self {
            IdRoute::CsvStream => "csv_stream",
            IdRoute::KeysetJson => "keyset_json",
        }
    }
}

/// A table's ids.
#[derive(Clone, Debug)]
pub struct IdSet {
    /// The non-empty ids, sorted bytewise, distinct.
    pub ids: Vec<String>,
    /// Every row, with those without an id (stored as rejects): the table's exact count.
    pub rows: u64,
    pub route: IdRoute,
}

/// Rows per keyset request (Datasette's maximum).
const KEYSET_PAGE: usize = 1000;

impl SourceClient {
    /// The table's id set by the cheapest route that answers (see the module comment).
    pub async fn id_set(&self, subdomain: &str, table: &str) -> Result<IdSet, SourceError> {
        let keyset_error = match self.ids_by_keyset(subdomain, table).await {
            Ok(set) => return Ok(set),
            Err(e) => e,
        };
        tracing::warn!(subdomain, table, error = %keyset_error, "Reading the ids by keyset pages failed; trying the streamed CSV.");
        let info = self.table_info(subdomain, table).await?;
        match self.ids_by_csv(subdomain, table, &info).await? {
            Some(set) => Ok(set),
            None => Err(keyset_error),
        }
    }

    /// The CSV route; None when the template has no `.json` suffix to swap for `.csv`.
    pub async fn ids_by_csv(
        &self,
        subdomain: &str,
        table: &str,
        info: &TableInfo,
    ) -> Result<Option<IdSet>, SourceError> {
        let mut url = self.table_url(subdomain, table)?;
        let Some(path) = url.path().strip_suffix(".json").map(|p| format!("{p}.csv")) else {
            return Ok(None);
        };
        url.set_path(&path);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("_stream", "on").append_pair("_sort", "id");
            for c in info.present.iter().filter(|c| c.as_str() != "id") {
                q.append_pair("_nocol", c);
            }
        }
        // An exact count to hold the stream against: the columns answer's, else SQL's.
        let expected = match &info.count {
            Some(c) => Some(c.rows),
            None => self
                .cheap_count(subdomain, table, false)
                .await
                .map(|c| c.rows),
        };
        let key = table_key(subdomain, table);
        let set = self
            .get_parsed(url, &key, |body, shown| {
                let set = parse_id_csv(body, shown)?;
                match expected {
                    Some(n) if n != set.rows => Err(SourceError::InvalidPage {
                        url: shown.into(),
                        message: format!(
                            "the streamed CSV holds {} rows, the table {n}: cut short, or the table changed meanwhile",
                            set.rows
                        ),
                    }),
                    _ => Ok(set),
                }
            })
            .await?;
        Ok(Some(set))
    }

    /// The keyset route: `_col=id&_shape=arrayfirst` pages after the last id, until a
    /// short page. Without the service secret civic.band silently caps `_size` at 100, so
    /// a page of a multiple of 100 rows is never taken for the last: one more is asked.
    pub async fn ids_by_keyset(&self, subdomain: &str, table: &str) -> Result<IdSet, SourceError> {
        let key = table_key(subdomain, table);
        let mut after: Option<String> = None;
        let (mut ids, mut rows) = (Vec::new(), 0u64);
        loop {
            let url = self.keyset_url(subdomain, table, after.as_deref())?;
            let page: Vec<Option<String>> = self
                .get_parsed(url, &key, |body, shown| {
                    parse_arrayfirst(body, shown, after.as_deref())
                })
                .await?;
            let short = page.len() < KEYSET_PAGE && !page.len().is_multiple_of(100);
            if page.is_empty() {
                break;
            }
            rows += page.len() as u64;
            let last = page.iter().rev().flatten().next().cloned();
            ids.extend(page.into_iter().flatten().filter(|id| !id.is_empty()));
            match last {
                Some(l) if !short => after = Some(l),
                // The last page; or a page of id-less rows only, after which nothing can
                // be asked for.
                _ => break,
            }
        }
        Ok(IdSet {
            ids,
            rows,
            route: IdRoute::KeysetJson,
        })
    }

    fn keyset_url(
        &self,
        subdomain: &str,
        table: &str,
        after: Option<&str>,
    ) -> Result<Url, SourceError> {
        let mut url = self.table_url(subdomain, table)?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("_size", &KEYSET_PAGE.to_string())
                .append_pair("_sort", "id")
                .append_pair("_col", "id")
                .append_pair("_shape", "arrayfirst");
            if let Some(a) = after {
                q.append_pair("id__gt", a);
            }
        }
        Ok(url)
    }
}

/// A streamed CSV of the id column: a header `id`, then one id per row, ascending.
pub fn parse_id_csv(body: &[u8], url: &str) -> Result<IdSet, SourceError> {
    let invalid = |message: String| SourceError::InvalidPage {
        url: url.into(),
        message,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(body);
    let header = reader
        .headers()
        .map_err(|e| invalid(format!("not a CSV ({e})")))?;
    if header.len() != 1 || &header[0] != "id" {
        return Err(invalid(format!(
            "expected one column `id`, got {:?}",
            header.iter().collect::<Vec<_>>()
        )));
    }
    let (mut ids, mut rows) = (Vec::<String>::new(), 0u64);
    for record in reader.records() {
        let record = record.map_err(|e| invalid(format!("a CSV row does not parse ({e})")))?;
        if record.len() != 1 {
            return Err(invalid(format!(
                "row {} has {} fields: an error text in the stream?",
                rows + 1,
                record.len()
            )));
        }
        rows += 1;
        let id = &record[0];
        if id.is_empty() {
            continue;
        }
        if id.chars().any(char::is_whitespace) {
            return Err(invalid(format!(
                "row {rows} is not an id ({id:?}): an error text in the stream?"
            )));
        }
        if let Some(prev) = ids.last() {
            if prev.as_bytes() >= id.as_bytes() {
                return Err(invalid(format!(
                    "ids are not strictly ascending at row {rows} ({prev:?} then {id:?})"
                )));
            }
        }
        ids.push(id.to_string());
    }
    Ok(IdSet {
        ids,
        rows,
        route: IdRoute::CsvStream,
    })
}

/// A `_shape=arrayfirst` answer: a JSON array of ids (null for a row without one),
/// ascending and after `after`.
fn parse_arrayfirst(
    body: &[u8],
    url: &str,
    after: Option<&str>,
) -> Result<Vec<Option<String>>, SourceError> {
    let invalid = |message: String| SourceError::InvalidPage {
        url: url.into(),
        message,
    };
    let values: Vec<serde_json::Value> = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("not a JSON array of ids ({e})")))?;
    let mut prev: Option<String> = after.map(String::from);
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        let id = match v {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s),
            serde_json::Value::Number(n) => Some(n.to_string()),
            other => return Err(invalid(format!("{other} is not an id"))),
        };
        if let Some(id) = id.as_deref().filter(|i| !i.is_empty()) {
            if prev
                .as_deref()
                .is_some_and(|p| p.as_bytes() >= id.as_bytes())
            {
                return Err(invalid(format!(
                    "ids do not advance ({prev:?} then {id:?})"
                )));
            }
            prev = Some(id.to_string());
        }
        out.push(id);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csv_of_ids_parses_and_counts_id_less_rows() {
        let set = parse_id_csv(b"id\r\n\r\na1\r\nb2\r\n", "u").unwrap();
        assert_eq!(set.ids, vec!["a1", "b2"]);
        assert_eq!(set.rows, 2);
        let set = parse_id_csv(b"id\n\"\"\na1\nb2\n", "u").unwrap();
        assert_eq!(set.rows, 3);
    }

    #[test]
    fn a_broken_csv_is_never_taken_for_the_table() {
        for (body, what) in [
            (&b"id,text\na1,x\n"[..], "one column"),
            (b"id\nb2\na1\n", "ascending"),
            (b"id\na1\nCSV contains more than 100 MB\n", "not an id"),
            (b"id\na1\na1\n", "ascending"),
        ] {
            let e = parse_id_csv(body, "u").unwrap_err();
            assert!(e.is_transient(), "{what}: {e}");
            assert!(e.to_string().contains(what), "{what}: {e}");
        }
    }

    #[test]
    fn keyset_pages_must_advance() {
        assert_eq!(
            parse_arrayfirst(br#"["a2", null, "a3"]"#, "u", Some("a1")).unwrap(),
            vec![Some("a2".into()), None, Some("a3".into())]
        );
        assert!(parse_arrayfirst(br#"["a1"]"#, "u", Some("a1")).is_err());
        assert!(parse_arrayfirst(br#"{"ok": false}"#, "u", None).is_err());
    }
}
