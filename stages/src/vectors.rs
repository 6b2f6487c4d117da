//! The search vectors civicload computed for a batch's pages (`tsvector`) and their phrase
//! keys (`int4[]`, migrations 0014 and 0015), carried with the batch to the load stage:
//! the vectors encoded once as binary COPY fields, the keys as plain values, expanded to
//! their COPY field as the stream is encoded: 4 bytes a key held in memory instead of 8
//! (~280 keys a page; a 1M-page load held ~20 batches at once).

use bytes::{BufMut, BytesMut};

/// Search vectors computed by civicload for a batch, already encoded as binary COPY
/// fields (length prefix included; -1 where civicload left the vector to PostgreSQL).
#[derive(Clone, Debug, Default)]
pub struct VectorFields {
    buf: BytesMut,
    ends: Vec<usize>,
    /// The phrase keys of each vector, back to back (none where the vector is NULL).
    keys: Vec<i32>,
    key_ends: Vec<u32>,
    /// How many rows got no vector from civicload.
    pub missing: usize,
}

impl VectorFields {
    /// Encodes each text's vector, or NULL where the builder declines.
    pub fn build<'a>(
        builder: &crate::tsvector::VectorBuilder,
        texts: impl Iterator<Item = &'a str>,
    ) -> Self {
        let mut v = VectorFields::default();
        for text in texts {
            match builder.vector(text) {
                Some(tsv) => {
                    tsv.encode_copy_field(&mut v.buf);
                    tsv.append_phrase_keys(&mut v.keys);
                }
                None => {
                    v.buf.put_i32(-1);
                    v.missing += 1;
                }
            }
            v.ends.push(v.buf.len());
            v.key_ends.push(v.keys.len() as u32);
        }
        v
    }

    /// The fields of a page batch's texts, computed off the async runtime (a few ms of
    /// CPU per thousand pages); None if that task failed (PostgreSQL computes them then).
    pub async fn for_rows(
        builder: std::sync::Arc<crate::tsvector::VectorBuilder>,
        rows: arrow_array::RecordBatch,
    ) -> Option<std::sync::Arc<Self>> {
        tokio::task::spawn_blocking(move || {
            use arrow_array::cast::AsArray;
            let texts = rows.column(crate::batch::col::TEXT).as_string::<i32>();
            VectorFields::build(&builder, texts.iter().map(|t| t.unwrap_or("")))
        })
        .await
        .ok()
        .map(std::sync::Arc::new)
    }

    pub(crate) fn field(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.buf[start..self.ends[i]]
    }

    /// Appends row `i`'s phrase keys as a binary COPY field (NULL where its vector is).
    pub(crate) fn put_keys_field(&self, i: usize, out: &mut BytesMut) {
        if self.field(i) == (-1i32).to_be_bytes() {
            out.put_i32(-1);
            return;
        }
        let start = if i == 0 { 0 } else { self.key_ends[i - 1] };
        crate::tsvector::encode_keys_field(
            &self.keys[start as usize..self.key_ends[i] as usize],
            out,
        );
    }

    /// The encoded size of every field, in bytes.
    pub(crate) fn encoded_len(&self) -> usize {
        // A key's COPY field: 8 bytes; an array's header: 24 (20 with its length prefix).
        self.buf.len() + 8 * self.keys.len() + 24 * self.key_ends.len()
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}
