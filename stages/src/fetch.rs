//! Fetch: pages through one source table in id order, from the job's checkpoint to the
//! end, and hands each validated page to transform. Stops fetching when cancelled (the
//! page in hand still goes downstream so it can be committed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::instrument;

use crate::batch::{JobKey, PageBatch};
use crate::source::{SourceClient, SourceCount, SourceError};
use crate::transform::PageBuilder;

/// One page of source rows, validated, not yet transformed.
#[derive(Debug)]
pub struct RawPage {
    pub seq: i64,
    pub rows: Vec<Box<RawValue>>,
    pub columns: Option<Vec<String>>,
    pub cursor_after: Option<String>,
    pub last: bool,
    pub fetch_time: Duration,
}

/// What a fetch run did.
#[derive(Clone, Debug, Default)]
pub struct FetchReport {
    pub pages: u64,
    pub rows: u64,
    pub fetch_time: Duration,
    /// The source said there is nothing more.
    pub reached_end: bool,
    /// The run stopped because it was cancelled.
    pub cancelled: bool,
}

/// The fetch stage for one job.
pub struct Fetch {
    pub client: SourceClient,
    /// Continue after this source id (the job's checkpoint); None starts at the beginning.
    pub start_after: Option<String>,
    /// The sequence number of the last committed batch.
    pub last_seq: i64,
    /// Receives the table's row count if the columns request gave it exactly (None: it
    /// did not), for progress: it saves a count request per job.
    pub count: Option<tokio::sync::oneshot::Sender<Option<SourceCount>>>,
}

impl Fetch {
    #[instrument(skip_all, fields(job = %job))]
    pub async fn run(
        self,
        job: Arc<JobKey>,
        output: mpsc::Sender<RawPage>,
        cancel: CancellationToken,
    ) -> Result<FetchReport, SourceError> {
        let table = job.document_type.table();
        let (columns, count) = tokio::select! {
            c = self.client.columns_and_count(&job.subdomain, table) => c?,
            _ = cancel.cancelled() => return Ok(FetchReport { cancelled: true, ..FetchReport::default() }),
        };
        if let Some(tx) = self.count {
            let _ = tx.send(count);
        }
        let mut report = FetchReport::default();
        let mut after = self.start_after;
        let mut seq = self.last_seq;
        loop {
            let started = Instant::now();
            let page = tokio::select! {
                p = self.client.page(&job.subdomain, table, &columns, after.as_deref()) => p?,
                _ = cancel.cancelled() => {
                    report.cancelled = true;
                    return Ok(report);
                }
            };
            let fetch_time = started.elapsed();
            report.fetch_time += fetch_time;
            report.pages += 1;
            report.rows += page.rows.len() as u64;
            let last = !page.has_more;
            if !page.rows.is_empty() {
                seq += 1;
                after = page.last_id.clone();
                let raw = RawPage {
                    seq,
                    rows: page.rows,
                    columns: page.columns,
                    cursor_after: page.last_id,
                    last,
                    fetch_time,
                };
                if output.send(raw).await.is_err() {
                    // Downstream stopped (it failed); its error is the one to report.
                    return Ok(report);
                }
            }
            if last {
                report.reached_end = true;
                return Ok(report);
            }
        }
    }
}

/// The transform stage: raw source pages in, page batches out. With a vector builder it
/// also computes each page's search vector, off the async threads.
#[derive(Default)]
pub struct Transform {
    pub vectors: SharedVectors,
    /// Pages a resumed pass has seen already (`PageBuilder::resuming`).
    pub seen: std::collections::HashSet<u64>,
}

/// A vector builder that becomes available while the pipeline runs (reading the server's
/// rules takes seconds), and may be replaced by a better one (`Coverage::Common` first,
/// then `Coverage::Assigned` if a text needs it). Batches transformed before any is ready
/// carry no vectors and PostgreSQL computes theirs, unless the transform waits for one
/// (`pending(true)`): a bulk load does, because a vector left to the server then costs a
/// second write.
#[derive(Clone, Default)]
pub struct SharedVectors {
    state: Arc<std::sync::RwLock<VectorState>>,
    ready: Arc<tokio::sync::Notify>,
    wait: bool,
}

#[derive(Clone, Default)]
enum VectorState {
    #[default]
    Pending,
    Ready(Arc<crate::tsvector::VectorBuilder>),
    /// civicload computes no vectors in this run.
    Unavailable,
}

impl SharedVectors {
    /// Vectors that will be resolved later (`resolve`); `wait`: the transform waits for them.
    pub fn pending(wait: bool) -> Self {
        SharedVectors {
            wait,
            ..SharedVectors::default()
        }
    }

    /// No vectors from civicload in this run: PostgreSQL computes them all.
    pub fn none() -> Self {
        let v = SharedVectors::default();
        v.resolve(None);
        v
    }

    /// A builder is ready (it replaces an earlier one), or none will be (None; ignored
    /// once a builder is in use).
    pub fn resolve(&self, builder: Option<Arc<crate::tsvector::VectorBuilder>>) {
        {
            let mut state = self.state.write().expect("vector state lock");
            match (builder, &*state) {
                (Some(b), _) => *state = VectorState::Ready(b),
                (None, VectorState::Pending) => *state = VectorState::Unavailable,
                (None, _) => {}
            }
        }
        self.ready.notify_waiters();
    }

    /// A builder is in use.
    pub fn is_ready(&self) -> bool {
        matches!(
            *self.state.read().expect("vector state lock"),
            VectorState::Ready(_)
        )
    }

    /// The builder to use for the next batch: waits for one when asked to (at most a
    /// minute: a batch must not wait on a stuck probe; PostgreSQL then computes its
    /// vectors).
    async fn current(&self) -> Option<Arc<crate::tsvector::VectorBuilder>> {
        loop {
            // Registered before the check, so a resolve in between is not missed.
            let notified = self.ready.notified();
            let state = self.state.read().expect("vector state lock").clone();
            match state {
                VectorState::Ready(b) => return Some(b),
                VectorState::Unavailable => return None,
                VectorState::Pending if !self.wait => return None,
                VectorState::Pending => {
                    if tokio::time::timeout(Duration::from_secs(60), notified)
                        .await
                        .is_err()
                    {
                        return None;
                    }
                }
            }
        }
    }
}

impl Transform {
    #[instrument(skip_all, fields(job = %job))]
    pub async fn run(
        self,
        job: Arc<JobKey>,
        mut input: mpsc::Receiver<RawPage>,
        output: mpsc::Sender<PageBatch>,
    ) -> Duration {
        let mut builder = PageBuilder::resuming(self.seen);
        let mut busy = Duration::ZERO;
        while let Some(raw) = input.recv().await {
            let started = Instant::now();
            for row in &raw.rows {
                builder.push(row, raw.columns.as_deref());
            }
            let t = builder.finish();
            let vectors = match self.vectors.current().await {
                Some(vb) => {
                    let (vb, rows) = (vb.clone(), t.rows.clone());
                    let fields = tokio::task::spawn_blocking(move || {
                        use arrow_array::cast::AsArray;
                        let texts = rows.column(crate::batch::col::TEXT).as_string::<i32>();
                        crate::copy::VectorFields::build(&vb, texts.iter().map(|t| t.unwrap_or("")))
                    })
                    .await
                    .ok();
                    fields.map(Arc::new)
                }
                None => None,
            };
            busy += started.elapsed();
            let batch = PageBatch {
                job: job.clone(),
                seq: raw.seq,
                cursor_after: raw.cursor_after,
                last: raw.last,
                fetched: raw.rows.len(),
                rows: t.rows,
                rejects: t.rejects,
                fetch_time: raw.fetch_time,
                vectors,
            };
            if output.send(batch).await.is_err() {
                break;
            }
        }
        busy
    }
}
