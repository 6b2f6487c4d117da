//! Transform: the rows of one source page (JSON) into an Arrow page batch plus rejects.
//!
//! A row that cannot be stored faithfully (no id, a date that is not a calendar date, a
//! page missing or < 1, a second row for the same (meeting, date, page), JSON columns that
//! are not JSON) becomes a reject with its reason and raw row; it never fails the batch.
//! U+0000 is stripped from text because PostgreSQL text cannot hold it.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

use arrow_array::builder::{Date32Builder, Int32Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use chrono::{Datelike, NaiveDate};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::batch::{page_schema, Reject, RejectReason};

/// Days from 1970-01-01 (Arrow's Date32 epoch) to 0001-01-01 in chrono's counting.
const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// The result of transforming one page of rows.
#[derive(Debug)]
pub struct Transformed {
    pub rows: RecordBatch,
    pub rejects: Vec<Reject>,
}

#[derive(Deserialize)]
struct Row<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    meeting: Option<&'a RawValue>,
    #[serde(borrow)]
    date: Option<&'a RawValue>,
    #[serde(borrow)]
    page: Option<&'a RawValue>,
    #[serde(borrow)]
    text: Option<&'a RawValue>,
    #[serde(borrow)]
    page_image: Option<&'a RawValue>,
    #[serde(borrow)]
    entities_json: Option<&'a RawValue>,
    #[serde(borrow)]
    votes_json: Option<&'a RawValue>,
}

/// The fields of a row that passed [`PageBuilder::check`], as they are stored.
struct CheckedPage<'a> {
    meeting: Cow<'a, str>,
    /// Days since 1970-01-01.
    date: i32,
    page: i32,
    entities: Option<String>,
    votes: Option<String>,
}

/// Builds page batches from source rows; one builder lives for a whole job pass.
#[derive(Default)]
pub struct PageBuilder {
    source_id: StringBuilder,
    meeting: StringBuilder,
    date: Date32Builder,
    page: Int32Builder,
    text: StringBuilder,
    page_image: StringBuilder,
    entities: StringBuilder,
    votes: StringBuilder,
    /// Hashes of the (meeting, date, page) keys seen so far in this pass of the job: a
    /// second row for the same page is a reject, whichever batch it arrives in. 64-bit
    /// hashes keep this at ~16 bytes per page (a collision needs ~4e9 pages per table).
    seen: HashSet<u64>,
    rejects: Vec<Reject>,
}

impl PageBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder for a pass resumed after a stop: `seen` holds the `page_key`s of the pages
    /// stored by the rows before the checkpoint, so a duplicate of one of them after it is
    /// a reject, exactly as in an uninterrupted pass.
    pub fn resuming(seen: HashSet<u64>) -> Self {
        PageBuilder {
            seen,
            ..Self::default()
        }
    }

    /// Adds one source row (object-shaped, or array-shaped with `columns`).
    pub fn push(&mut self, raw: &RawValue, columns: Option<&[String]>) {
        let text = raw.get();
        if text.starts_with('[') {
            match array_to_object(text, columns) {
                Some(obj) => self.push_object(&obj, text),
                None => self.reject(
                    None,
                    text,
                    RejectReason::MalformedRow,
                    "an array row without the `columns` that name its positions".into(),
                ),
            }
        } else {
            self.push_object(text, text);
        }
    }

    /// Adds one object-shaped row: appended when every check passes, otherwise a reject
    /// with `raw_for_reject` (the row as the source sent it).
    fn push_object(&mut self, json: &str, raw_for_reject: &str) {
        let row: Row = match serde_json::from_str(json) {
            Ok(r) => r,
            Err(e) => {
                return self.reject(
                    None,
                    raw_for_reject,
                    RejectReason::MalformedRow,
                    format!("not a JSON object row ({e})"),
                );
            }
        };
        let id = match row.id.and_then(scalar_string) {
            Some(id) if !id.is_empty() => strip_nul(id).into_owned(),
            _ => {
                return self.reject(
                    None,
                    raw_for_reject,
                    RejectReason::MissingId,
                    "the row has no `id`".into(),
                )
            }
        };
        match self.check(&row) {
            Ok(page) => self.append(&id, &row, page),
            Err((reason, detail)) => self.reject(Some(id), raw_for_reject, reason, detail),
        }
    }

    /// The checks of a row with an id, in order: meeting, date, page number, the JSON
    /// columns, and not a second row for a page already seen in this pass (which the page
    /// then counts as).
    fn check<'a>(&mut self, row: &Row<'a>) -> Result<CheckedPage<'a>, (RejectReason, String)> {
        let Some(meeting) = row.meeting.and_then(scalar_string) else {
            return Err((
                RejectReason::MissingMeeting,
                "the row has no `meeting`".into(),
            ));
        };
        let meeting = strip_nul(meeting);
        let date_text = row.date.and_then(scalar_string);
        let Some(date) = date_text.as_deref().and_then(parse_date) else {
            let shown = raw_or_null(row.date);
            return Err((
                RejectReason::BadDate,
                format!("`date` {shown} is not a calendar date (YYYY-MM-DD)"),
            ));
        };
        let Some(page) = row.page.and_then(parse_page_number) else {
            let shown = raw_or_null(row.page);
            return Err((
                RejectReason::BadPage,
                format!("`page` {shown} is not a page number >= 1"),
            ));
        };
        let entities = optional_json(row.entities_json).map_err(|e| {
            (
                RejectReason::BadJson,
                format!("`entities_json` is not JSON ({e})"),
            )
        })?;
        let votes = optional_json(row.votes_json).map_err(|e| {
            (
                RejectReason::BadJson,
                format!("`votes_json` is not JSON ({e})"),
            )
        })?;
        if !self.seen.insert(page_key(&meeting, date, page)) {
            return Err((
                RejectReason::DuplicatePage,
                format!(
                    "another row in this table already holds page {page} of this meeting and date"
                ),
            ));
        }
        Ok(CheckedPage {
            meeting,
            date,
            page,
            entities,
            votes,
        })
    }

    /// Appends a checked row to the batch's columns.
    fn append(&mut self, id: &str, row: &Row<'_>, page: CheckedPage<'_>) {
        let body = row
            .text
            .and_then(scalar_string)
            .unwrap_or(Cow::Borrowed(""));
        self.source_id.append_value(id);
        self.meeting.append_value(page.meeting.as_ref());
        self.date.append_value(page.date);
        self.page.append_value(page.page);
        self.text.append_value(strip_nul(body).as_ref());
        match row.page_image.and_then(scalar_string) {
            Some(img) => self.page_image.append_value(strip_nul(img).as_ref()),
            None => self.page_image.append_null(),
        }
        self.entities.append_option(page.entities.as_deref());
        self.votes.append_option(page.votes.as_deref());
    }

    fn reject(
        &mut self,
        source_id: Option<String>,
        raw: &str,
        reason: RejectReason,
        detail: String,
    ) {
        self.rejects.push(Reject {
            source_id,
            // jsonb cannot hold U+0000 either.
            raw: raw.replace("\\u0000", ""),
            reason,
            detail,
        });
    }

    /// Finishes the batch; the builder can be reused for the next one.
    pub fn finish(&mut self) -> Transformed {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.source_id.finish()),
            Arc::new(self.meeting.finish()),
            Arc::new(self.date.finish()),
            Arc::new(self.page.finish()),
            Arc::new(self.text.finish()),
            Arc::new(self.page_image.finish()),
            Arc::new(self.entities.finish()),
            Arc::new(self.votes.finish()),
        ];
        let rows = RecordBatch::try_new(page_schema(), columns)
            .expect("page batch columns follow page_schema");
        Transformed {
            rows,
            rejects: std::mem::take(&mut self.rejects),
        }
    }
}

/// Transforms one page of source rows.
pub fn transform_rows(rows: &[Box<RawValue>], columns: Option<&[String]>) -> Transformed {
    let mut builder = PageBuilder::new();
    for raw in rows {
        builder.push(raw, columns);
    }
    builder.finish()
}

/// The duplicate-detection key of a page: (meeting, date as days since 1970, page).
pub fn page_key(meeting: &str, date: i32, page: i32) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // Fixed keys: the same page must hash the same way for the whole pass.
    let mut h =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .build_hasher();
    h.write(meeting.as_bytes());
    h.write_i32(date);
    h.write_i32(page);
    h.finish()
}

fn array_to_object(text: &str, columns: Option<&[String]>) -> Option<String> {
    let columns = columns?;
    let values: Vec<&RawValue> = serde_json::from_str(text).ok()?;
    if values.len() != columns.len() {
        return None;
    }
    let map: serde_json::Map<String, serde_json::Value> = columns
        .iter()
        .zip(values)
        .map(|(c, v)| Some((c.clone(), serde_json::from_str(v.get()).ok()?)))
        .collect::<Option<_>>()?;
    serde_json::to_string(&map).ok()
}

/// A JSON scalar as text: strings as themselves, numbers in their JSON spelling; null and
/// containers give None.
fn scalar_string(raw: &RawValue) -> Option<Cow<'_, str>> {
    let t = raw.get();
    match t.as_bytes().first()? {
        b'"' => {
            // Borrow when there is nothing to unescape (the common case, and the big text).
            let inner = &t[1..t.len() - 1];
            if !inner.contains('\\') {
                Some(Cow::Borrowed(inner))
            } else {
                serde_json::from_str::<String>(t).ok().map(Cow::Owned)
            }
        }
        b'-' | b'0'..=b'9' => Some(Cow::Borrowed(t)),
        _ => None,
    }
}

/// A field's raw JSON for a reject message (`null` when absent).
fn raw_or_null(raw: Option<&RawValue>) -> &str {
    raw.map_or("null", RawValue::get)
}

fn strip_nul(s: Cow<'_, str>) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', ""))
    } else {
        s
    }
}

/// Strict `YYYY-MM-DD` that is a real calendar date, as days since 1970-01-01.
pub fn parse_date(s: &str) -> Option<i32> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let (y, m, d) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let date = NaiveDate::from_ymd_opt(y as i32, m, d)?;
    Some(date.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE)
}

fn parse_page_number(raw: &RawValue) -> Option<i32> {
    let n: i64 = match serde_json::from_str::<serde_json::Value>(raw.get()).ok()? {
        serde_json::Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))?,
        serde_json::Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    (1..=i64::from(i32::MAX)).contains(&n).then_some(n as i32)
}

/// A text column holding JSON (civic.band's `entities_json`/`votes_json`): None for
/// null/absent/empty, the JSON text when valid (without U+0000, which jsonb refuses).
fn optional_json(raw: Option<&RawValue>) -> Result<Option<String>, String> {
    let Some(raw) = raw else { return Ok(None) };
    let Some(text) = scalar_string(raw) else {
        return if raw.get() == "null" {
            Ok(None)
        } else {
            Err(format!("got {}", shorten(raw.get())))
        };
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(mut value) => {
            if text.contains("\\u0000") || text.contains('\0') {
                strip_nul_json(&mut value);
                Ok(Some(value.to_string()))
            } else {
                Ok(Some(text.into_owned()))
            }
        }
        Err(e) => Err(e.to_string()),
    }
}

fn strip_nul_json(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) if s.contains('\0') => *s = s.replace('\0', ""),
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_nul_json),
        serde_json::Value::Object(o) => {
            let entries: Vec<_> = std::mem::take(o).into_iter().collect();
            for (k, mut val) in entries {
                strip_nul_json(&mut val);
                o.insert(k.replace('\0', ""), val);
            }
        }
        _ => {}
    }
}

fn shorten(s: &str) -> String {
    if s.len() <= 80 {
        return s.to_string();
    }
    let mut end = 80;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::col;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Date32Type, Int32Type};

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_string()).unwrap()
    }

    #[test]
    fn good_rows_become_pages() {
        let rows = vec![raw(
            r#"{"id":"abc123","meeting":"CityCouncil","date":"2024-03-07","page":2,"text":"Café \u0000ok","page_image":"/CityCouncil/2024-03-07/2.png","entities_json":"[{\"text\":\"Núñez\"}]","votes_json":null}"#,
        )];
        let t = transform_rows(&rows, None);
        assert!(t.rejects.is_empty(), "{:?}", t.rejects);
        let b = &t.rows;
        assert_eq!(b.num_rows(), 1);
        assert_eq!(
            b.column(col::SOURCE_ID).as_string::<i32>().value(0),
            "abc123"
        );
        assert_eq!(b.column(col::TEXT).as_string::<i32>().value(0), "Café ok");
        assert_eq!(b.column(col::PAGE).as_primitive::<Int32Type>().value(0), 2);
        let days = b.column(col::DATE).as_primitive::<Date32Type>().value(0);
        assert_eq!(days, parse_date("2024-03-07").unwrap());
        assert_eq!(
            b.column(col::ENTITIES).as_string::<i32>().value(0),
            r#"[{"text":"Núñez"}]"#
        );
        assert!(b.column(col::VOTES).is_null(0));
    }

    #[test]
    fn dates_must_be_calendar_dates() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2000-01-01"), Some(10957));
        for bad in [
            "2023-02-30",
            "20230115",
            "",
            "2023-1-05",
            "2023-13-01",
            "abcd-ef-gh",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_rows_are_rejected_with_reasons_and_the_rest_stays() {
        let rows = vec![
            raw(r#"{"id":"a","meeting":"M","date":"2023-02-30","page":1,"text":"x"}"#),
            raw(r#"{"id":"b","meeting":"M","date":"2023-02-01","page":0,"text":"x"}"#),
            raw(r#"{"id":"c","meeting":"M","date":"2023-02-01","page":null,"text":"x"}"#),
            raw(r#"{"meeting":"M","date":"2023-02-01","page":1,"text":"x"}"#),
            raw(r#"{"id":"d","meeting":"M","date":"2023-02-01","page":1,"text":"x"}"#),
            raw(r#"{"id":"e","meeting":"M","date":"2023-02-01","page":1,"text":"y"}"#),
            raw(
                r#"{"id":"f","meeting":"M","date":"2023-02-01","page":"2","text":"x","entities_json":"{oops"}"#,
            ),
            raw(r#"{"id":"g","meeting":"M","date":"2023-02-01","page":"3","text":null}"#),
        ];
        let t = transform_rows(&rows, None);
        let reasons: Vec<_> = t
            .rejects
            .iter()
            .map(|r| (r.source_id.as_deref(), r.reason))
            .collect();
        assert_eq!(
            reasons,
            vec![
                (Some("a"), RejectReason::BadDate),
                (Some("b"), RejectReason::BadPage),
                (Some("c"), RejectReason::BadPage),
                (None, RejectReason::MissingId),
                (Some("e"), RejectReason::DuplicatePage),
                (Some("f"), RejectReason::BadJson),
            ]
        );
        let ids = t.rows.column(col::SOURCE_ID).as_string::<i32>();
        assert_eq!(ids.iter().flatten().collect::<Vec<_>>(), vec!["d", "g"]);
        assert_eq!(t.rows.column(col::TEXT).as_string::<i32>().value(1), "");
    }

    #[test]
    fn a_duplicate_page_in_a_later_batch_is_rejected() {
        let mut b = PageBuilder::new();
        b.push(
            &raw(r#"{"id":"a","meeting":"M","date":"2023-02-01","page":1,"text":"x"}"#),
            None,
        );
        assert!(b.finish().rejects.is_empty());
        b.push(
            &raw(r#"{"id":"b","meeting":"M","date":"2023-02-01","page":1,"text":"y"}"#),
            None,
        );
        let t = b.finish();
        assert_eq!(t.rows.num_rows(), 0);
        assert_eq!(t.rejects[0].reason, RejectReason::DuplicatePage);
    }

    #[test]
    fn legacy_array_rows_are_read_by_column_name() {
        let cols: Vec<String> = ["id", "meeting", "date", "page", "text"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let rows = vec![raw(r#"["z9","Board","2020-05-05",3,"hello"]"#)];
        let t = transform_rows(&rows, Some(&cols));
        assert!(t.rejects.is_empty());
        assert_eq!(
            t.rows.column(col::SOURCE_ID).as_string::<i32>().value(0),
            "z9"
        );
    }
}
