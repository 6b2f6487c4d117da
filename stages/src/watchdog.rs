//! The watchdog: each job's stages report progress to a [`Pulse`] (a page fetched, a chunk
//! of COPY data sent, a statement answered, a batch committed), and a stage that holds
//! work but makes no progress for [`Watchdog::stall_after`] is *stalled*: the stage aborts
//! what it waits on and retries from the last checkpoint, and after
//! [`Watchdog::max_stalls`] stalls the job fails with a message that names the stage.
//!
//! Why a watchdog and not only timeouts: a wait can hang below every timeout civicload
//! sets (sqlx 0.8's TLS socket once parked a COPY forever, waiting to read while the
//! server waited for data), and the only sign is that nothing moves. The pulse sees that
//! whatever the cause; the lease heartbeat stops renewing a stalled job so that another
//! worker can take it over, and progress output names it after a minute.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// How stalls are detected and handled.
#[derive(Clone, Copy, Debug)]
pub struct Watchdog {
    /// A stage holding work without progress for this long is stalled.
    pub stall_after: Duration,
    /// Stalls of one job before it fails.
    pub max_stalls: u32,
    /// After a stall is handled (a backend cancelled), how long the stuck call gets to
    /// return before the next, harder step.
    pub grace: Duration,
}

impl Default for Watchdog {
    fn default() -> Self {
        Watchdog {
            stall_after: Duration::from_secs(180),
            max_stalls: 3,
            grace: Duration::from_secs(5),
        }
    }
}

impl Watchdog {
    /// A watchdog that declares a stall after `stall_after` (at least a second).
    pub fn after(stall_after: Duration) -> Self {
        Watchdog {
            stall_after: stall_after.max(Duration::from_secs(1)),
            grace: Duration::from_secs(5).min(stall_after.max(Duration::from_secs(1))),
            ..Watchdog::default()
        }
    }
}

/// The stages of a job that the watchdog follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Fetch,
    Transform,
    Spool,
    Load,
}

impl Stage {
    const ALL: [Stage; 4] = [Stage::Fetch, Stage::Transform, Stage::Spool, Stage::Load];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Fetch => "fetch",
            Stage::Transform => "transform",
            Stage::Spool => "spool",
            Stage::Load => "load",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What a stage is doing when it waits: named in stall messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    Request = 0,
    Vectors,
    Write,
    Begin,
    Documents,
    Copy,
    Upsert,
    Rejects,
    Checkpoint,
    Commit,
}

impl Step {
    pub fn describe(self) -> &'static str {
        match self {
            Step::Request => "a source request",
            Step::Vectors => "the search-vector rules",
            Step::Write => "writing the Parquet file",
            Step::Begin => "opening the batch's transaction",
            Step::Documents => "upserting the batch's documents",
            Step::Copy => "the COPY of the batch's pages",
            Step::Upsert => "upserting the batch's pages",
            Step::Rejects => "recording the batch's rejects",
            Step::Checkpoint => "recording the checkpoint",
            Step::Commit => "committing the batch",
        }
    }

    fn from_u8(v: u8) -> Step {
        const STEPS: [Step; 10] = [
            Step::Request,
            Step::Vectors,
            Step::Write,
            Step::Begin,
            Step::Documents,
            Step::Copy,
            Step::Upsert,
            Step::Rejects,
            Step::Checkpoint,
            Step::Commit,
        ];
        STEPS.get(v as usize).copied().unwrap_or(Step::Request)
    }
}

/// One stage's clock.
#[derive(Debug, Default)]
struct Clock {
    busy: AtomicBool,
    /// Milliseconds since the pulse's origin at the last sign of progress.
    last_ms: AtomicU64,
    seq: AtomicI64,
    step: AtomicU8,
}

/// Where a job waits, as the watchdog sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub stage: Stage,
    pub step: Step,
    /// The batch it holds (the next one, for fetch).
    pub seq: i64,
    /// Time since its last progress.
    pub idle: Duration,
}

impl std::fmt::Display for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the {} stage, batch {}, waiting on {} for {} s",
            self.stage.as_str(),
            self.seq,
            self.step.describe(),
            self.idle.as_secs()
        )
    }
}

/// A job's progress, shared by its stages and read by the watchdog, the lease heartbeat
/// and progress output. Cheap to update (relaxed atomics, no locks).
#[derive(Debug)]
pub struct Pulse {
    origin: Instant,
    clocks: [Clock; 4],
    /// The PostgreSQL backend of the batch transaction in flight (0: none).
    backend: AtomicI32,
}

impl Default for Pulse {
    fn default() -> Self {
        Pulse {
            origin: Instant::now(),
            clocks: Default::default(),
            backend: AtomicI32::new(0),
        }
    }
}

impl Pulse {
    pub fn new() -> Arc<Pulse> {
        Arc::new(Pulse::default())
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn clock(&self, stage: Stage) -> &Clock {
        &self.clocks[stage.index()]
    }

    /// `stage` starts work on batch `seq` (its clock starts now).
    pub fn start(&self, stage: Stage, seq: i64, step: Step) {
        let c = self.clock(stage);
        c.seq.store(seq, Ordering::Relaxed);
        c.step.store(step as u8, Ordering::Relaxed);
        c.last_ms.store(self.now_ms(), Ordering::Relaxed);
        c.busy.store(true, Ordering::Relaxed);
    }

    /// `stage` made progress and is now at `step`.
    pub fn step(&self, stage: Stage, step: Step) {
        let c = self.clock(stage);
        c.step.store(step as u8, Ordering::Relaxed);
        c.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// `stage` made progress (bytes moved) without changing step.
    pub fn beat(&self, stage: Stage) {
        self.clock(stage)
            .last_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    /// `stage` holds no work (it waits on its input or output channel, which is another
    /// stage's business).
    pub fn idle(&self, stage: Stage) {
        self.clock(stage).busy.store(false, Ordering::Relaxed);
    }

    /// The longest-waiting stage that holds work, if any.
    pub fn waiting(&self) -> Option<Waiting> {
        let now = self.now_ms();
        Stage::ALL
            .iter()
            .filter_map(|&stage| {
                let c = self.clock(stage);
                c.busy.load(Ordering::Relaxed).then(|| Waiting {
                    stage,
                    step: Step::from_u8(c.step.load(Ordering::Relaxed)),
                    seq: c.seq.load(Ordering::Relaxed),
                    idle: Duration::from_millis(
                        now.saturating_sub(c.last_ms.load(Ordering::Relaxed)),
                    ),
                })
            })
            .max_by_key(|w| w.idle)
    }

    /// The job is stalled: a stage has held work without progress for `limit`.
    pub fn is_stalled(&self, limit: Duration) -> bool {
        self.waiting().is_some_and(|w| w.idle >= limit)
    }

    /// Resolves once `stage` has held work without progress for `limit`, with where it
    /// waits. Polls a few times per `limit` (the clock is atomics, not a notification:
    /// progress must cost nothing).
    pub async fn stalled(&self, stage: Stage, limit: Duration) -> Waiting {
        let every = (limit / 8).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            tokio::time::sleep(every).await;
            let c = self.clock(stage);
            if !c.busy.load(Ordering::Relaxed) {
                continue;
            }
            let idle = Duration::from_millis(
                self.now_ms()
                    .saturating_sub(c.last_ms.load(Ordering::Relaxed)),
            );
            if idle >= limit {
                return Waiting {
                    stage,
                    step: Step::from_u8(c.step.load(Ordering::Relaxed)),
                    seq: c.seq.load(Ordering::Relaxed),
                    idle,
                };
            }
        }
    }

    /// The batch transaction in flight runs on this backend (None: no transaction).
    pub fn set_backend(&self, pid: Option<i32>) {
        self.backend.store(pid.unwrap_or(0), Ordering::Relaxed);
    }

    pub fn backend(&self) -> Option<i32> {
        Some(self.backend.load(Ordering::Relaxed)).filter(|&p| p != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_busy_stage_without_progress_is_stalled_and_named() {
        let pulse = Pulse::new();
        pulse.start(Stage::Load, 9, Step::Begin);
        pulse.step(Stage::Load, Step::Copy);
        let limit = Duration::from_secs(30);
        let waiting =
            tokio::time::timeout(Duration::from_secs(40), pulse.stalled(Stage::Load, limit))
                .await
                .expect("the stall is seen within the limit and a poll");
        assert_eq!(
            (waiting.stage, waiting.step, waiting.seq),
            (Stage::Load, Step::Copy, 9)
        );
        assert!(waiting.idle >= limit);
        assert!(pulse.is_stalled(limit));
        assert!(waiting
            .to_string()
            .contains("the COPY of the batch's pages"));
    }

    #[tokio::test(start_paused = true)]
    async fn progress_and_idle_stages_are_not_stalls() {
        let pulse = Pulse::new();
        let limit = Duration::from_secs(10);
        // Idle (waiting on a channel): never a stall, however long.
        pulse.start(Stage::Fetch, 1, Step::Request);
        pulse.idle(Stage::Fetch);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(!pulse.is_stalled(limit));
        assert_eq!(pulse.waiting(), None);
        // Busy with a beat every 5 s: not stalled after a minute.
        pulse.start(Stage::Load, 2, Step::Copy);
        for _ in 0..12 {
            tokio::time::advance(Duration::from_secs(5)).await;
            pulse.beat(Stage::Load);
        }
        assert!(!pulse.is_stalled(limit));
        let stalled =
            tokio::time::timeout(Duration::from_secs(9), pulse.stalled(Stage::Load, limit)).await;
        assert!(stalled.is_err(), "9 s without progress is not a 10 s stall");
    }
}
