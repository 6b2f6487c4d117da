//! PostgreSQL binary COPY encoding of a page batch, for `COPY ... FROM STDIN (FORMAT binary)`.
//!
//! Binary COPY skips PostgreSQL's text parsing of every value (dates, integers, escapes in
//! multi-kilobyte text), which is the cheapest way to move pages into PostgreSQL: into a
//! staging table for the upsert, or straight into `meeting_pages` when the rows are new.

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Int32Type};
use arrow_array::{Array, Date32Array, Int32Array, RecordBatch, StringArray};
use bytes::{BufMut, BytesMut};

use crate::batch::col;
use crate::vectors::VectorFields;

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// PostgreSQL counts dates from 2000-01-01, Arrow from 1970-01-01.
const PG_EPOCH_OFFSET_DAYS: i32 = 10_957;

/// The staging columns, in the order the encoder writes them for `RowKey::Meeting`.
pub const STAGING_COLUMNS: &str =
    "source_id, meeting, meeting_date, page_number, text, page_image, entities, votes, search_vector, phrase_keys";

/// The `meeting_pages` columns, in the order the encoder writes them for `RowKey::Document`.
/// `meeting_date` (the document's, copied for newest-first search, migration 0009) comes
/// after the vector, then the vector's phrase keys (migration 0014).
pub const PAGES_COLUMNS: &str = "source_id, document_id, municipality_id, page_number, text, page_image, entities, votes, search_vector, meeting_date, phrase_keys";

/// How each row names its meeting: the second and third fields of a COPY row.
#[derive(Clone, Copy, Debug)]
pub enum RowKey<'a> {
    /// `meeting, meeting_date` (`STAGING_COLUMNS`): the upsert joins them to documents.
    Meeting,
    /// `document_id, municipality_id` (`PAGES_COLUMNS`), resolved beforehand, one document
    /// id per row: for a COPY straight into `meeting_pages`.
    Document {
        municipality_id: i64,
        document_ids: &'a [i64],
    },
}

/// Encodes a page batch (see `batch::page_schema`) as one binary COPY stream, with NULL
/// search vectors (PostgreSQL computes them).
pub fn encode_pages(batch: &RecordBatch) -> BytesMut {
    encode_pages_with_vectors(batch, None)
}

/// Encodes a page batch with the search vectors civicload computed for it, for the
/// staging table (`STAGING_COLUMNS`).
pub fn encode_pages_with_vectors(batch: &RecordBatch, vectors: Option<&VectorFields>) -> BytesMut {
    encode_rows(batch, vectors, RowKey::Meeting)
}

/// Encodes a page batch, its vectors and how its rows name their meeting (`RowKey`), as
/// one buffer.
pub fn encode_rows(batch: &RecordBatch, vectors: Option<&VectorFields>, key: RowKey) -> BytesMut {
    let rows = CopyRows::new(batch, vectors, key);
    let mut out = BytesMut::with_capacity(rows.encoded_len());
    rows.header(&mut out);
    for i in 0..rows.len() {
        rows.row(i, &mut out);
    }
    rows.trailer(&mut out);
    out
}

/// The rows of a binary COPY stream, encoded one at a time: the load sends them in chunks
/// of a few hundred KB, so a batch is never held twice in full (rows and COPY stream).
pub struct CopyRows<'a> {
    ids: &'a StringArray,
    meetings: &'a StringArray,
    dates: &'a Date32Array,
    pages: &'a Int32Array,
    texts: &'a StringArray,
    images: &'a StringArray,
    entities: &'a StringArray,
    votes: &'a StringArray,
    vectors: Option<&'a VectorFields>,
    key: RowKey<'a>,
}

impl<'a> CopyRows<'a> {
    pub fn new(batch: &'a RecordBatch, vectors: Option<&'a VectorFields>, key: RowKey<'a>) -> Self {
        if let RowKey::Document { document_ids, .. } = key {
            assert_eq!(
                document_ids.len(),
                batch.num_rows(),
                "one document id per row"
            );
        }
        CopyRows {
            ids: batch.column(col::SOURCE_ID).as_string::<i32>(),
            meetings: batch.column(col::MEETING).as_string::<i32>(),
            dates: batch.column(col::DATE).as_primitive::<Date32Type>(),
            pages: batch.column(col::PAGE).as_primitive::<Int32Type>(),
            texts: batch.column(col::TEXT).as_string::<i32>(),
            images: batch.column(col::PAGE_IMAGE).as_string::<i32>(),
            entities: batch.column(col::ENTITIES).as_string::<i32>(),
            votes: batch.column(col::VOTES).as_string::<i32>(),
            vectors,
            key,
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The size of the whole stream.
    pub fn encoded_len(&self) -> usize {
        let payload: usize = [
            self.ids,
            self.meetings,
            self.texts,
            self.images,
            self.entities,
            self.votes,
        ]
        .iter()
        .map(|a| a.values().len())
        .sum();
        let vector_bytes = self.vectors.map(|v| v.encoded_len()).unwrap_or(0);
        payload + vector_bytes + self.len() * 60 + 32
    }

    pub fn header(&self, out: &mut BytesMut) {
        out.put_slice(SIGNATURE);
        out.put_i32(0); // flags
        out.put_i32(0); // header extension length
    }

    pub fn row(&self, i: usize, out: &mut BytesMut) {
        let document_key = matches!(self.key, RowKey::Document { .. });
        out.put_i16(if document_key { 11 } else { 10 });
        put_text(out, Some(self.ids.value(i)));
        match self.key {
            RowKey::Meeting => {
                put_text(out, Some(self.meetings.value(i)));
                out.put_i32(4);
                out.put_i32(self.dates.value(i) - PG_EPOCH_OFFSET_DAYS);
            }
            RowKey::Document {
                municipality_id,
                document_ids,
            } => {
                out.put_i32(8);
                out.put_i64(document_ids[i]);
                out.put_i32(8);
                out.put_i64(municipality_id);
            }
        }
        out.put_i32(4);
        out.put_i32(self.pages.value(i));
        put_text(out, Some(self.texts.value(i)));
        let (images, entities, votes) = (self.images, self.entities, self.votes);
        put_text(out, images.is_valid(i).then(|| images.value(i)));
        put_jsonb(out, entities.is_valid(i).then(|| entities.value(i)));
        put_jsonb(out, votes.is_valid(i).then(|| votes.value(i)));
        match self.vectors {
            Some(v) => out.put_slice(v.field(i)),
            None => out.put_i32(-1),
        }
        if document_key {
            out.put_i32(4);
            out.put_i32(self.dates.value(i) - PG_EPOCH_OFFSET_DAYS);
        }
        match self.vectors {
            Some(v) => v.put_keys_field(i, out),
            None => out.put_i32(-1),
        }
    }

    pub fn trailer(&self, out: &mut BytesMut) {
        out.put_i16(-1);
    }
}

fn put_text(out: &mut BytesMut, value: Option<&str>) {
    match value {
        Some(s) => {
            out.put_i32(s.len() as i32);
            out.put_slice(s.as_bytes());
        }
        None => out.put_i32(-1),
    }
}

fn put_jsonb(out: &mut BytesMut, value: Option<&str>) {
    match value {
        Some(s) => {
            out.put_i32(s.len() as i32 + 1);
            out.put_u8(1); // jsonb binary format version
            out.put_slice(s.as_bytes());
        }
        None => out.put_i32(-1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::transform_rows;
    use serde_json::value::RawValue;

    #[test]
    fn encodes_header_rows_and_trailer() {
        let rows = vec![RawValue::from_string(
            r#"{"id":"ab","meeting":"M","date":"2000-01-02","page":7,"text":"hé","page_image":null}"#.into(),
        )
        .unwrap()];
        let t = transform_rows(&rows, None);
        let bytes = encode_pages(&t.rows);
        let mut expected = Vec::new();
        expected.extend_from_slice(SIGNATURE);
        expected.extend_from_slice(&[0; 8]);
        expected.extend_from_slice(&10i16.to_be_bytes());
        expected.extend_from_slice(&2i32.to_be_bytes());
        expected.extend_from_slice(b"ab");
        expected.extend_from_slice(&1i32.to_be_bytes());
        expected.extend_from_slice(b"M");
        expected.extend_from_slice(&4i32.to_be_bytes());
        expected.extend_from_slice(&1i32.to_be_bytes()); // one day after 2000-01-01
        expected.extend_from_slice(&4i32.to_be_bytes());
        expected.extend_from_slice(&7i32.to_be_bytes());
        expected.extend_from_slice(&3i32.to_be_bytes());
        expected.extend_from_slice("hé".as_bytes());
        // page_image, entities, votes, search_vector, phrase_keys: NULL.
        for _ in 0..5 {
            expected.extend_from_slice(&(-1i32).to_be_bytes());
        }
        expected.extend_from_slice(&(-1i16).to_be_bytes());
        assert_eq!(&bytes[..], &expected[..]);
    }
}
