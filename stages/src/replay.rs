//! Replay: reads a job's spooled Parquet files back into page batches for the load stage,
//! with no source API calls, and the per-file checkpoint that makes a replay resumable
//! and idempotent (`replay_files`, written in each batch's transaction).
//!
//! Files are fetched and decoded a few at a time ahead of the load (`read_ahead`), and
//! handed on in manifest order (pass, then seq), so a page re-OCR'd in a later pass wins
//! exactly as it did in the live database. A missing or damaged file is reported by its
//! URL and skipped: the rest of the job still loads, and the job ends failed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::StreamExt;
use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{instrument, warn};

use crate::archive::{Archive, ArchiveError, FileEntry};
use crate::batch::{JobKey, PageBatch};
use crate::load::{BatchOutcome, Checkpoint};
use crate::spool::{decode, sha256_hex, DecodeError};
use crate::store::replay::{file_recorded, record_file, LoadedFile};

/// Why one file could not be replayed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{url} is missing from the archive")]
    Missing { url: String },
    #[error("{url} could not be read: {source}")]
    Read {
        url: String,
        #[source]
        source: ArchiveError,
    },
    #[error("{url} is corrupted: its SHA-256 is {actual}, the manifest says {expected}")]
    Checksum {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("{url} is corrupted: {source}")]
    Decode {
        url: String,
        #[source]
        source: DecodeError,
    },
    #[error("{url} does not match its manifest entry: {reason}")]
    Mismatch { url: String, reason: String },
}

/// What a reader run did.
#[derive(Debug, Default)]
pub struct ReadReport {
    pub files: u64,
    pub bytes: u64,
    pub read_time: Duration,
    /// Files that could not be replayed, in manifest order.
    pub failures: Vec<FileError>,
    pub cancelled: bool,
}

/// Reads one job's files, in order, into page batches.
pub struct Reader {
    pub archive: Archive,
    /// Files to load, in order. A batch's `seq` is its file's 1-based position here
    /// (`FileCheckpoint` maps it back to the file).
    pub files: Arc<[FileEntry]>,
    /// Files fetched and decoded ahead of the load: the memory bound of a replay is
    /// (read_ahead + channel capacity + 1) batches per job.
    pub read_ahead: usize,
    /// Computes each batch's search vectors and phrase keys as the backfill's transform
    /// does (None: PostgreSQL's trigger computes them, a PL/pgSQL call per page).
    pub vectors: Option<Arc<crate::tsvector::VectorBuilder>>,
}

impl Reader {
    #[instrument(skip_all, fields(job = %job))]
    pub async fn run(
        self,
        job: Arc<JobKey>,
        output: mpsc::Sender<PageBatch>,
        cancel: CancellationToken,
    ) -> ReadReport {
        let mut report = ReadReport::default();
        // Owned values per read: the futures run inside a spawned task.
        let archive = self.archive.clone();
        let files = self.files.clone();
        let reader_job = job.clone();
        let mut reads = futures::stream::iter(0..files.len())
            .map(move |i| {
                let (archive, files, job) = (archive.clone(), files.clone(), reader_job.clone());
                async move {
                    let started = Instant::now();
                    let entry = &files[i];
                    let result = read_file(&archive, &job, entry, i as i64 + 1).await;
                    (entry.bytes, result, started.elapsed())
                }
            })
            .buffered(self.read_ahead.max(1));
        loop {
            let next = tokio::select! {
                n = reads.next() => n,
                _ = cancel.cancelled() => {
                    report.cancelled = true;
                    break;
                }
            };
            let Some((bytes, result, took)) = next else {
                break;
            };
            report.read_time += took;
            match result {
                Ok(mut batch) => {
                    if let Some(vb) = &self.vectors {
                        batch.vectors =
                            crate::vectors::VectorFields::for_rows(vb.clone(), batch.rows.clone())
                                .await;
                    }
                    report.files += 1;
                    report.bytes += bytes;
                    if output.send(batch).await.is_err() {
                        // Load stopped (it failed); its error is the one to report.
                        break;
                    }
                }
                Err(e) => {
                    warn!(job = %job, "Skipping a file that cannot be replayed: {e}");
                    report.failures.push(e);
                }
            }
        }
        report
    }
}

async fn read_file(
    archive: &Archive,
    job: &Arc<JobKey>,
    entry: &FileEntry,
    ordinal: i64,
) -> Result<PageBatch, FileError> {
    let started = Instant::now();
    let url = archive.url_of(&entry.path);
    let bytes = match archive.get(&entry.path).await {
        Ok(b) => b,
        Err(ArchiveError::Missing { .. }) => return Err(FileError::Missing { url }),
        Err(source) => return Err(FileError::Read { url, source }),
    };
    let actual = sha256_hex(&bytes);
    if actual != entry.sha256 {
        return Err(FileError::Checksum {
            url,
            expected: entry.sha256.clone(),
            actual,
        });
    }
    let decoded = tokio::task::spawn_blocking(move || decode(bytes))
        .await
        .expect("the Parquet decoder does not panic")
        .map_err(|source| FileError::Decode {
            url: url.clone(),
            source,
        })?;
    let mismatch = |reason: String| FileError::Mismatch {
        url: url.clone(),
        reason,
    };
    if decoded.subdomain != job.subdomain || decoded.document_type != job.document_type.as_str() {
        return Err(mismatch(format!(
            "it holds {}/{}",
            decoded.subdomain, decoded.document_type
        )));
    }
    if (decoded.pass, decoded.seq) != (entry.pass, entry.seq) {
        return Err(mismatch(format!(
            "it is batch {}-{}, the manifest says {}-{}",
            decoded.pass, decoded.seq, entry.pass, entry.seq
        )));
    }
    let (pages, rejects) = (decoded.rows.num_rows() as u64, decoded.rejects.len() as u64);
    if (pages, rejects) != (entry.pages, entry.rejects) {
        return Err(mismatch(format!(
            "it holds {pages} pages and {rejects} rejects, the manifest says {} and {}",
            entry.pages, entry.rejects
        )));
    }
    Ok(PageBatch {
        job: job.clone(),
        seq: ordinal,
        cursor_after: decoded.cursor_after,
        last: decoded.last,
        fetched: decoded.fetched,
        rows: decoded.rows,
        rejects: decoded.rejects,
        fetch_time: started.elapsed(),
        vectors: None,
    })
}

/// The replay checkpoint: a batch is recorded as its file in `replay_files`, guarded by
/// the job's lease and by the file not being recorded yet.
pub struct FileCheckpoint {
    pub owner: String,
    /// The same list the reader was given.
    pub files: Arc<[FileEntry]>,
}

impl FileCheckpoint {
    fn file(&self, batch: &PageBatch) -> &FileEntry {
        let i = usize::try_from(batch.seq - 1).expect("replay batches are numbered from 1");
        &self.files[i]
    }
}

impl Checkpoint for FileCheckpoint {
    fn record<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        batch: &'a PageBatch,
        outcome: &'a BatchOutcome,
        elapsed: Duration,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
        Box::pin(async move {
            let f = self.file(batch);
            let file = LoadedFile {
                job_id: batch.job.job_id,
                path: &f.path,
                sha256: &f.sha256,
                pass: f.pass,
                seq: f.seq,
                pages: f.pages as i64,
                rejects: f.rejects as i64,
            };
            let counts = [
                outcome.created as i64,
                outcome.updated as i64,
                outcome.unchanged as i64,
                outcome.rejected as i64,
            ];
            record_file(
                conn,
                &file,
                &self.owner,
                outcome.fetched as i64,
                counts,
                elapsed,
            )
            .await
        })
    }

    fn was_committed<'a>(
        &'a self,
        pool: &'a PgPool,
        batch: &'a PageBatch,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
        Box::pin(async move {
            let f = self.file(batch);
            file_recorded(pool, batch.job.job_id, &f.path, &f.sha256, &self.owner).await
        })
    }
}
