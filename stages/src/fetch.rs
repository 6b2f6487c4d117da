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
use crate::watchdog::{Pulse, Stage, Step, Watchdog};

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
    /// The job's progress, and when a request that brings nothing counts as a stall.
    pub pulse: Arc<Pulse>,
    pub watchdog: Watchdog,
}

impl Fetch {
    #[instrument(skip_all, fields(job = %job))]
    pub async fn run(
        mut self,
        job: Arc<JobKey>,
        output: mpsc::Sender<RawPage>,
        cancel: CancellationToken,
    ) -> Result<FetchReport, SourceError> {
        let table = job.document_type.table();
        let mut seq = self.last_seq;
        let first = self
            .watched(seq + 1, &cancel, || {
                self.client.columns_and_count(&job.subdomain, table)
            })
            .await?;
        let Some((columns, count)) = first else {
            return Ok(FetchReport {
                cancelled: true,
                ..FetchReport::default()
            });
        };
        if let Some(tx) = self.count.take() {
            let _ = tx.send(count);
        }
        let mut report = FetchReport::default();
        let mut after = self.start_after.clone();
        loop {
            let started = Instant::now();
            let fetched = self
                .watched(seq + 1, &cancel, || {
                    self.client
                        .page(&job.subdomain, table, &columns, after.as_deref())
                })
                .await?;
            let Some(page) = fetched else {
                report.cancelled = true;
                return Ok(report);
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

    /// Runs a source request (with its own retries) under the watchdog: a request that
    /// brings nothing for `stall_after` is dropped and sent again, up to `max_stalls`
    /// times in a row, after which the job fails naming the stall. None when cancelled.
    async fn watched<T, F, Fut>(
        &self,
        seq: i64,
        cancel: &CancellationToken,
        request: F,
    ) -> Result<Option<T>, SourceError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, SourceError>>,
    {
        let mut stalls = 0;
        loop {
            self.pulse.start(Stage::Fetch, seq, Step::Request);
            let answer = tokio::select! {
                r = request() => Some(r),
                w = self.pulse.stalled(Stage::Fetch, self.watchdog.stall_after) => {
                    stalls += 1;
                    if stalls >= self.watchdog.max_stalls {
                        self.pulse.idle(Stage::Fetch);
                        return Err(SourceError::Stalled { seq, seconds: w.idle.as_secs(), stalls });
                    }
                    tracing::warn!(seq, stalls = stalls, "No answer from the source for {} s; sending the request again.", w.idle.as_secs());
                    None
                }
                _ = cancel.cancelled() => {
                    self.pulse.idle(Stage::Fetch);
                    return Ok(None);
                }
            };
            if let Some(r) = answer {
                // Waiting for transform to take the page is not the fetch's stall.
                self.pulse.idle(Stage::Fetch);
                return r.map(Some);
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
    /// The job's progress (a waiting transform is named in stall warnings).
    pub pulse: Arc<Pulse>,
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
            self.pulse.start(Stage::Transform, raw.seq, Step::Vectors);
            for row in &raw.rows {
                builder.push(row, raw.columns.as_deref());
            }
            let t = builder.finish();
            let vectors = match self.vectors.current().await {
                Some(vb) => crate::vectors::VectorFields::for_rows(vb, t.rows.clone()).await,
                None => None,
            };
            busy += started.elapsed();
            self.pulse.idle(Stage::Transform);
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
