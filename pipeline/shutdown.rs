//! Stopping on a signal, bounded: the first SIGTERM or Ctrl-C stops new work and lets the
//! batches in flight commit; whatever has not ended after [`STOP_GRACE`] is abandoned
//! (its transactions roll back, and the checkpoints keep every job exact), and the process
//! exits 1, within 30 s of the signal in all (the grace, then at most [`HAND_BACK_LIMIT`]
//! to pause the jobs). A second signal stops at once. One handler for every long command.

use std::time::Duration;

use sqlx::PgPool;
use stages::store::jobs;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// How long a stop waits for the work in flight.
pub const STOP_GRACE: Duration = Duration::from_secs(25);
/// How long an abandoning stop tries to pause its jobs (a stalled database must not hold
/// the stop; the leases then expire).
const HAND_BACK_LIMIT: Duration = Duration::from_secs(3);

/// Exit status of a stop that abandoned work in flight (the contract's "incomplete").
const EXIT_ABANDONED: i32 = 1;

/// Whose jobs to hand back when work in flight is abandoned.
pub struct Leases {
    pub pool: PgPool,
    pub owner: String,
}

/// SIGINT and SIGTERM, as one stream of stop requests.
struct Signals {
    int: Option<Signal>,
    term: Option<Signal>,
}

impl Signals {
    fn install() -> Signals {
        Signals {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
        }
    }

    async fn next(&mut self) {
        async fn recv(s: &mut Option<Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = recv(&mut self.int) => {}
            _ = recv(&mut self.term) => {}
        }
    }
}

/// Installs the handlers now (so a signal at any later moment is a graceful stop) and
/// returns the task that acts on them: on the first signal it cancels `cancel` and, if the
/// command has not ended within `STOP_GRACE` (or on a second signal), hands the jobs back
/// (`leases`) and exits the process.
pub fn on_signal(
    cancel: CancellationToken,
    what: &'static str,
    leases: Option<Leases>,
) -> tokio::task::JoinHandle<()> {
    let mut signals = Signals::install();
    tokio::spawn(async move {
        signals.next().await;
        warn!(
            "Stopping: {what}; waiting at most {} s for the batches in flight to commit. Press Ctrl-C again to stop at once.",
            STOP_GRACE.as_secs()
        );
        cancel.cancel();
        tokio::select! {
            _ = tokio::time::sleep(STOP_GRACE) => {
                warn!("The batches in flight did not commit within {} s: abandoning them. Their transactions roll back; each job resumes exactly from its last committed checkpoint: run the same command again (or add --resume).", STOP_GRACE.as_secs());
            }
            _ = signals.next() => {
                warn!("Second signal: stopping at once. Batches in flight roll back; each job resumes exactly from its last committed checkpoint: run the same command again (or add --resume).");
            }
        }
        if let Some(l) = leases {
            hand_back(&l).await;
        }
        std::process::exit(EXIT_ABANDONED);
    })
}

/// Pauses this process's running jobs and clears their leases, so that a resume anywhere
/// takes them at once; gives up after a few seconds (a stalled database must not hold the
/// stop), and then the leases simply expire.
async fn hand_back(leases: &Leases) {
    match tokio::time::timeout(HAND_BACK_LIMIT, jobs::abandon(&leases.pool, &leases.owner)).await {
        Ok(Ok(n)) if n > 0 => warn!(jobs = n, "Paused the jobs this process held."),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            warn!(error = %e, "Could not pause the jobs this process held; their leases expire.")
        }
        Err(_) => warn!(
            "The database did not answer within {} s; the jobs' leases expire.",
            HAND_BACK_LIMIT.as_secs()
        ),
    }
}
