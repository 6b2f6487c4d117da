//! The search vectors civicload computed for a batch's pages (`tsvector`) and their phrase
//! keys (`int4[]`, migration 0014), encoded once as binary COPY fields and carried with the
//! batch to the load stage.

use bytes::{BufMut, BytesMut};

/// Search vectors computed by civicload for a batch, already encoded as binary COPY
/// fields (length prefix included; -1 where civicload left the vector to PostgreSQL).
#[derive(Clone, Debug, Default)]
pub struct VectorFields {
    buf: BytesMut,
    ends: Vec<usize>,
    /// The phrase keys of each vector (NULL where the vector is), back to back.
    keys: BytesMut,
    key_ends: Vec<usize>,
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
                    crate::tsvector::encode_keys_field(&tsv.phrase_keys(), &mut v.keys);
                }
                None => {
                    v.buf.put_i32(-1);
                    v.keys.put_i32(-1);
                    v.missing += 1;
                }
            }
            v.ends.push(v.buf.len());
            v.key_ends.push(v.keys.len());
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

    /// Row `i`'s phrase keys, as a binary COPY field.
    pub(crate) fn keys_field(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.key_ends[i - 1] };
        &self.keys[start..self.key_ends[i]]
    }

    /// The encoded size of every field, in bytes.
    pub(crate) fn encoded_len(&self) -> usize {
        self.buf.len() + self.keys.len()
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}
