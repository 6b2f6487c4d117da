//! Spool: the stage between transform and load that writes every batch to the archive as
//! a Parquet file (zstd) before passing it on, so a batch's checkpoint only advances once
//! its file is durable. Also the one place that knows the file format: `encode` writes it,
//! `decode` reads it back into a `PageBatch` for replay.
//!
//! A file holds the batch's pages with exactly the columns of `page_schema()`, and in its
//! key-value metadata the batch's provenance and its rejects (a JSON array), so one file is
//! one batch, committed or not at all. README.md ("Spool archive") documents the format.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{Array, RecordBatch, StringArray};
use bytes::Bytes;
use chrono::Utc;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::format::KeyValue;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tracing::{debug, instrument};

use crate::archive::{
    Archive, ArchiveError, FileEntry, Manifest, CIVICLOAD_VERSION, SCHEMA_VERSION,
};
use crate::batch::{col, page_schema, JobKey, PageBatch, Reject, RejectReason};

/// Key-value metadata keys of a spool file.
pub mod meta {
    pub const SCHEMA_VERSION: &str = "civicload.schema_version";
    pub const CIVICLOAD_VERSION: &str = "civicload.version";
    pub const SUBDOMAIN: &str = "civicload.subdomain";
    pub const DOCUMENT_TYPE: &str = "civicload.document_type";
    pub const PASS: &str = "civicload.pass";
    pub const SEQ: &str = "civicload.seq";
    pub const CURSOR_AFTER: &str = "civicload.cursor_after";
    pub const LAST: &str = "civicload.last";
    pub const FETCHED: &str = "civicload.fetched";
    pub const REJECTS: &str = "civicload.rejects";
}

/// A spool failure: the batch was not made durable and must not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{job}: encoding batch {seq} as Parquet failed: {source}")]
    Encode {
        job: String,
        seq: i64,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("{job}: spooling batch {seq} failed: {source}. The batch was not loaded; rerun the same command once the archive is writable, the job continues from its checkpoint")]
    Archive {
        job: String,
        seq: i64,
        #[source]
        source: ArchiveError,
    },
    #[error("{job}: the job manifest cannot be read or written: {source}. Check the spool archive, then rerun the same command")]
    Manifest {
        job: String,
        #[source]
        source: ArchiveError,
    },
}

/// A spool file that cannot be used for replay.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("it is not a readable Parquet file ({0})")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("its data cannot be decoded ({0})")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("it does not have civicload's page columns ({0})")]
    Schema(String),
    #[error("its metadata is incomplete or wrong: {0}")]
    Metadata(String),
}

/// What a spool run did.
#[derive(Clone, Debug, Default)]
pub struct SpoolReport {
    pub files: u64,
    pub bytes: u64,
    pub rows: u64,
    pub spool_time: Duration,
}

/// The spool stage for one job.
pub struct Spool {
    archive: Archive,
    job: Arc<JobKey>,
    /// The job's pass: part of every file name, so a fresh pass never overwrites the
    /// files of an earlier one.
    pass: i32,
    /// The job's progress: a write that hangs is named in stall warnings, and the job's
    /// lease stops being renewed.
    pulse: Arc<crate::watchdog::Pulse>,
}

impl Spool {
    pub fn new(archive: Archive, job: Arc<JobKey>, pass: i32) -> Self {
        Spool {
            archive,
            job,
            pass,
            pulse: Default::default(),
        }
    }

    /// Reports progress to the job's `pulse`.
    pub fn with_pulse(mut self, pulse: Arc<crate::watchdog::Pulse>) -> Self {
        self.pulse = pulse;
        self
    }

    /// Writes each batch's file, commits it, records it in the job manifest, and only then
    /// passes the batch on to load. Ends when the input closes; at the first failure it
    /// stops (dropping its output, so load commits nothing after it).
    #[instrument(skip_all, fields(job = %self.job))]
    pub async fn run(
        self,
        mut input: mpsc::Receiver<PageBatch>,
        output: mpsc::Sender<PageBatch>,
    ) -> Result<SpoolReport, SpoolError> {
        let job_name = self.job.to_string();
        let mut manifest = match self
            .archive
            .read_job_manifest(&self.job.subdomain, self.job.document_type)
            .await
        {
            Ok(Some(m)) => m,
            Ok(None) => {
                // Written before any batch, so a job whose table is empty is in the archive
                // too (a replay then verifies it as 0 = 0).
                let m = Manifest::for_job(&self.job.subdomain, self.job.document_type);
                if let Err(source) = self.archive.write_job_manifest(&m).await {
                    return Err(SpoolError::Manifest {
                        job: job_name,
                        source,
                    });
                }
                m
            }
            Err(source) => {
                return Err(SpoolError::Manifest {
                    job: job_name,
                    source,
                })
            }
        };
        let mut report = SpoolReport::default();
        while let Some(batch) = input.recv().await {
            let started = Instant::now();
            let seq = batch.seq;
            let pass = self.pass;
            use crate::watchdog::{Stage, Step};
            self.pulse.start(Stage::Spool, seq, Step::Write);
            // Parquet + zstd is CPU work: keep it off the async workers.
            let encoded = {
                let batch = batch.clone();
                tokio::task::spawn_blocking(move || encode(&batch, pass))
                    .await
                    .expect("the Parquet encoder does not panic")
            };
            let (bytes, entry) = encoded.map_err(|source| SpoolError::Encode {
                job: job_name.clone(),
                seq,
                source,
            })?;
            let archive_err = |source| SpoolError::Archive {
                job: job_name.clone(),
                seq,
                source,
            };
            self.archive
                .put_committed(&entry.path, bytes)
                .await
                .map_err(archive_err)?;
            report.files += 1;
            report.bytes += entry.bytes;
            report.rows += entry.rows;
            debug!(path = %entry.path, bytes = entry.bytes, "Spooled a batch.");
            manifest.jobs[0].record(entry);
            manifest.updated_at = Utc::now();
            self.archive
                .write_job_manifest(&manifest)
                .await
                .map_err(archive_err)?;
            report.spool_time += started.elapsed();
            self.pulse.idle(Stage::Spool);
            if output.send(batch).await.is_err() {
                // Load stopped (it failed); its error is the one to report.
                break;
            }
        }
        Ok(report)
    }
}

/// A reject as stored in a file's metadata.
#[derive(Serialize, Deserialize)]
struct StoredReject {
    source_id: Option<String>,
    reason: String,
    detail: String,
    raw: String,
}

/// Encodes a batch as a Parquet file; returns its bytes and its manifest entry.
pub fn encode(
    batch: &PageBatch,
    pass: i32,
) -> Result<(Bytes, FileEntry), parquet::errors::ParquetError> {
    let job = &batch.job;
    let rejects: Vec<StoredReject> = batch
        .rejects
        .iter()
        .map(|r| StoredReject {
            source_id: r.source_id.clone(),
            reason: r.reason.as_str().into(),
            detail: r.detail.clone(),
            raw: r.raw.clone(),
        })
        .collect();
    let mut kv = BTreeMap::new();
    kv.insert(meta::SCHEMA_VERSION, SCHEMA_VERSION.to_string());
    kv.insert(meta::CIVICLOAD_VERSION, CIVICLOAD_VERSION.to_string());
    kv.insert(meta::SUBDOMAIN, job.subdomain.clone());
    kv.insert(meta::DOCUMENT_TYPE, job.document_type.as_str().to_string());
    kv.insert(meta::PASS, pass.to_string());
    kv.insert(meta::SEQ, batch.seq.to_string());
    kv.insert(meta::LAST, batch.last.to_string());
    kv.insert(meta::FETCHED, batch.fetched.to_string());
    kv.insert(
        meta::REJECTS,
        serde_json::to_string(&rejects).expect("rejects always serialize"),
    );
    if let Some(c) = &batch.cursor_after {
        kv.insert(meta::CURSOR_AFTER, c.clone());
    }
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_created_by(format!("civicload {CIVICLOAD_VERSION}"))
        .set_key_value_metadata(Some(
            kv.into_iter()
                .map(|(k, v)| KeyValue::new(k.to_string(), v))
                .collect(),
        ))
        .build();
    // Written against page_schema() itself (not the batch's schema object) so every file
    // has the documented schema.
    let rows = RecordBatch::try_new(page_schema(), batch.rows.columns().to_vec())?;
    let mut writer = ArrowWriter::try_new(Vec::with_capacity(1 << 20), page_schema(), Some(props))?;
    writer.write(&rows)?;
    let bytes = Bytes::from(writer.into_inner()?);

    let (first, last) = key_range(batch);
    let entry = FileEntry {
        path: Archive::file_rel(&job.subdomain, job.document_type, pass, batch.seq),
        pass,
        seq: batch.seq,
        pages: rows.num_rows() as u64,
        rejects: batch.rejects.len() as u64,
        rows: (rows.num_rows() + batch.rejects.len()) as u64,
        bytes: bytes.len() as u64,
        sha256: sha256_hex(&bytes),
        first_source_id: first,
        last_source_id: last,
        cursor_after: batch.cursor_after.clone(),
        last: batch.last,
        schema_version: SCHEMA_VERSION,
        civicload_version: CIVICLOAD_VERSION.into(),
        written_at: Utc::now(),
    };
    Ok((bytes, entry))
}

/// Hex SHA-256 of a file's bytes (what manifests record).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn key_range(batch: &PageBatch) -> (Option<String>, Option<String>) {
    let ids = batch
        .rows
        .column(col::SOURCE_ID)
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("source_id is Utf8");
    let page_ids = (0..ids.len())
        .filter(|&i| ids.is_valid(i))
        .map(|i| ids.value(i));
    let reject_ids = batch.rejects.iter().filter_map(|r| r.source_id.as_deref());
    let all: Vec<&str> = page_ids.chain(reject_ids).collect();
    (
        all.iter().min().map(|s| s.to_string()),
        all.iter().max().map(|s| s.to_string()),
    )
}

/// A spool file read back.
#[derive(Debug)]
pub struct Decoded {
    pub rows: RecordBatch,
    pub rejects: Vec<Reject>,
    pub seq: i64,
    pub pass: i32,
    pub cursor_after: Option<String>,
    pub last: bool,
    pub fetched: usize,
    pub subdomain: String,
    pub document_type: String,
}

/// Reads a spool file: the page rows with `page_schema()`, and the provenance and
/// rejects from its metadata.
pub fn decode(bytes: Bytes) -> Result<Decoded, DecodeError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
    let file_meta = builder.metadata().file_metadata();
    let num_rows = usize::try_from(file_meta.num_rows()).unwrap_or(0);
    let kv = Metadata(
        file_meta
            .key_value_metadata()
            .map(|kvs| {
                kvs.iter()
                    .filter_map(|k| k.value.clone().map(|v| (k.key.clone(), v)))
                    .collect()
            })
            .unwrap_or_default(),
    );
    kv.check_version()?;
    let rejects = kv.rejects()?;
    let rows = read_rows(builder, num_rows)?;
    Ok(Decoded {
        rows,
        rejects,
        seq: kv.number(meta::SEQ)?,
        pass: kv.number(meta::PASS)? as i32,
        cursor_after: kv.0.get(meta::CURSOR_AFTER).cloned(),
        last: kv.get(meta::LAST)? == "true",
        fetched: kv.number(meta::FETCHED)? as usize,
        subdomain: kv.get(meta::SUBDOMAIN)?,
        document_type: kv.get(meta::DOCUMENT_TYPE)?,
    })
}

/// A spool file's key-value metadata.
struct Metadata(BTreeMap<String, String>);

impl Metadata {
    /// The value of `key`, which must be there.
    fn get(&self, key: &str) -> Result<String, DecodeError> {
        self.0
            .get(key)
            .cloned()
            .ok_or_else(|| DecodeError::Metadata(format!("no {key}")))
    }

    /// The value of `key` as a number.
    fn number(&self, key: &str) -> Result<i64, DecodeError> {
        self.get(key)?
            .parse()
            .map_err(|_| DecodeError::Metadata(format!("{key} is not a number")))
    }

    /// Refuses a file written by a newer civicload (a higher schema version).
    fn check_version(&self) -> Result<(), DecodeError> {
        let version: u32 = self.get(meta::SCHEMA_VERSION)?.parse().map_err(|_| {
            DecodeError::Metadata(format!("{} is not a number", meta::SCHEMA_VERSION))
        })?;
        if version > SCHEMA_VERSION {
            return Err(DecodeError::Metadata(format!(
                "schema version {version} is newer than this civicload reads ({SCHEMA_VERSION}); upgrade civicload"
            )));
        }
        Ok(())
    }

    /// The rejects stored beside the rows.
    fn rejects(&self) -> Result<Vec<Reject>, DecodeError> {
        let stored: Vec<StoredReject> = serde_json::from_str(&self.get(meta::REJECTS)?)
            .map_err(|e| DecodeError::Metadata(format!("{}: {e}", meta::REJECTS)))?;
        stored
            .into_iter()
            .map(|r| {
                Ok(Reject {
                    source_id: r.source_id,
                    reason: RejectReason::parse(&r.reason).ok_or_else(|| {
                        DecodeError::Metadata(format!("unknown reject reason {:?}", r.reason))
                    })?,
                    detail: r.detail,
                    raw: r.raw,
                })
            })
            .collect()
    }
}

/// The file's rows as one batch with `page_schema()`, exactly the `num_rows` its footer
/// announces.
fn read_rows(
    builder: ParquetRecordBatchReaderBuilder<Bytes>,
    num_rows: usize,
) -> Result<RecordBatch, DecodeError> {
    let reader = builder.with_batch_size(num_rows.max(1)).build()?;
    let mut batches = Vec::new();
    for b in reader {
        batches.push(b?);
    }
    let rows = match batches.len() {
        0 => RecordBatch::new_empty(page_schema()),
        1 => batches.pop().expect("one batch"),
        n => {
            return Err(DecodeError::Schema(format!(
                "expected one record batch, read {n}"
            )))
        }
    };
    // Re-attach the canonical schema: checks names, types and nullability in one go.
    let rows = RecordBatch::try_new(page_schema(), rows.columns().to_vec())
        .map_err(|e| DecodeError::Schema(e.to_string()))?;
    if rows.num_rows() != num_rows {
        return Err(DecodeError::Schema(format!(
            "the footer says {num_rows} rows, the data holds {}",
            rows.num_rows()
        )));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::DocumentType;
    use crate::transform::PageBuilder;
    use serde_json::value::RawValue;

    pub(crate) fn sample_batch(n: usize) -> PageBatch {
        let mut b = PageBuilder::new();
        for i in 0..n {
            let row = serde_json::json!({
                "id": format!("id{i:05}"), "meeting": "CityCouncil", "date": "2024-02-29",
                "page": i + 1, "text": format!("Café Zürich page {i} — 市议会"),
                "page_image": null, "entities_json": "[]", "votes_json": null
            })
            .to_string();
            b.push(&RawValue::from_string(row).unwrap(), None);
        }
        let bad = RawValue::from_string(
            r#"{"id":"bad1","meeting":"X","date":"2023-02-30","page":1,"text":"t"}"#.into(),
        )
        .unwrap();
        b.push(&bad, None);
        let t = b.finish();
        PageBatch {
            job: Arc::new(JobKey {
                job_id: 1,
                municipality_id: 1,
                subdomain: "alameda.ca".into(),
                document_type: DocumentType::Minutes,
            }),
            seq: 7,
            cursor_after: Some(format!("id{:05}", n)),
            last: true,
            fetched: n + 1,
            rows: t.rows,
            rejects: t.rejects,
            fetch_time: Duration::ZERO,
            vectors: None,
        }
    }

    #[test]
    fn a_file_round_trips_pages_rejects_and_provenance() {
        let batch = sample_batch(50);
        let (bytes, entry) = encode(&batch, 3).unwrap();
        assert_eq!(entry.path, "alameda.ca/minutes/000003-00000007.parquet");
        assert_eq!((entry.pages, entry.rejects, entry.rows), (50, 1, 51));
        assert_eq!(entry.sha256, sha256_hex(&bytes));
        assert_eq!(entry.first_source_id.as_deref(), Some("bad1"));
        assert_eq!(entry.last_source_id.as_deref(), Some("id00049"));
        let d = decode(bytes).unwrap();
        assert_eq!(d.rows, batch.rows);
        assert_eq!(d.rejects, batch.rejects);
        assert_eq!((d.seq, d.pass, d.last, d.fetched), (7, 3, true, 51));
        assert_eq!(d.cursor_after, batch.cursor_after);
        assert_eq!(
            (d.subdomain.as_str(), d.document_type.as_str()),
            ("alameda.ca", "minutes")
        );
    }

    #[test]
    fn a_damaged_file_is_refused() {
        let (bytes, _) = encode(&sample_batch(10), 0).unwrap();
        let mut broken = bytes.to_vec();
        broken.truncate(broken.len() / 2);
        assert!(decode(Bytes::from(broken)).is_err());
        assert!(decode(Bytes::from_static(b"not parquet at all")).is_err());
    }
}
