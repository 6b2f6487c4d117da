//! `civicload backfill`: reads the options, plans and runs the jobs (`crate::backfill`),
//! prepares the database for search after a bulk load, and prints the end of the run.

use std::sync::Arc;

use anyhow::Context;
use sqlx::PgPool;
use stages::source::SourceClient;
use stages::store::jobs::{self};
use stages::store::leases::{owner_id, Lease};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backfill::Backfill;
use crate::cli::{check_template, BackfillArgs, Cli};
use crate::db::connect_target;
use crate::exit::{UsageError, EXIT_INCOMPLETE, EXIT_OK};
use crate::ui::report::{self, Unfinished};
use stages::target::{Generation, Target};

pub async fn backfill(cli: &Cli, args: BackfillArgs) -> anyhow::Result<u8> {
    let started = std::time::Instant::now();
    check_template(&cli.source_url).map_err(UsageError)?;
    let spool = crate::archive::open_spool(cli)?;
    let client =
        SourceClient::new(cli.source_config(args.http_timeout, args.max_retries, args.batch_size))
            .context("building the HTTP client")?;
    // Each running job (`--concurrency` and the two small-job workers) holds at most one
    // connection for its batch transaction; leave room for claims, heartbeats, verification
    // and the ANALYZE near the end of a bulk load.
    let (pool, target) = connect_target(cli, u32::from(args.concurrency) + 5).await?;
    let load_mode = load_mode(&pool, &target, &args).await?;
    let generation = target.observer().map(|o| o.generation);
    let args = BackfillArgs {
        bulk: load_mode.is_bulk(),
        ..args
    };
    let vectors = read_vector_rules(&pool, &args, generation);
    let skip_fk_checks = args.bulk && fk_checks_skippable(&pool).await;
    let cancel = CancellationToken::new();
    let owner = owner_id();
    // Installed before planning, so a SIGTERM at any moment is a graceful stop.
    crate::shutdown::on_signal(
        cancel.clone(),
        "no new fetches",
        Some(crate::shutdown::Leases {
            pool: pool.clone(),
            owner: owner.clone(),
        }),
    );
    let backfill = Arc::new(Backfill {
        vectors: vectors.clone(),
        pool: pool.clone(),
        client,
        args: args.clone(),
        owner,
        cancel: cancel.clone(),
        spool: spool.clone(),
        skip_fk_checks,
        target: target.clone(),
        pulses: Default::default(),
    });
    let ids = backfill.plan().await?;
    info!(jobs = ids.len(), owner = %backfill.owner, "Planned the backfill.");
    if target.observer().is_some() {
        stages::store::observer::municipalities::ensure_known(&pool).await?;
    }

    if args.verify_only {
        return verify_only(&backfill, &ids).await;
    }

    let run_started = chrono::Utc::now();
    let owner = backfill.owner.clone();
    let source = backfill.client.clone();
    let cleaner = start_gin_cleaner(&pool, generation);
    let result = backfill.run(ids.clone()).await;
    cleaner.cancel();
    let result = result?;
    crate::refresh::record_backfill_usage(&pool, &source, &ids).await;
    if let Some(archive) = &spool {
        crate::archive::finish_run(archive, &pool, &ids, &owner, run_started).await;
    }

    report_and_prepare(&pool, &target, load_mode, &result, started, &owner).await?;
    end_of_run(&pool, &ids, result.interrupted).await
}

/// Bulk mode (issue 6), decided once before any job writes: see pipeline/maintain.rs.
/// Never into civic-observer's tables: they are in service, and their indexes theirs.
async fn load_mode(
    pool: &PgPool,
    target: &Target,
    args: &BackfillArgs,
) -> anyhow::Result<crate::maintain::LoadMode> {
    Ok(match target {
        Target::Civicload => crate::maintain::decide_bulk(pool, args.bulk_request()).await?,
        Target::CivicObserver(_) => crate::maintain::LoadMode {
            bulk: false,
            initial: false,
            pages_analyzed: false,
        },
    })
}

/// G1: the GIN pending list is merged beside the batches (stages/src/target.rs) until the
/// returned token is cancelled.
fn start_gin_cleaner(pool: &PgPool, generation: Option<Generation>) -> CancellationToken {
    let cleaner = CancellationToken::new();
    if generation == Some(Generation::G1) {
        let every = std::time::Duration::from_secs(2);
        tokio::spawn(stages::target::clean_gin_pending_lists(
            pool.clone(),
            every,
            cleaner.clone(),
        ));
    }
    cleaner
}

/// The run's summary, then search readiness (issue 6): vectors, indexes, statistics, the
/// stats view (refreshed there; here only when the run stops early).
async fn report_and_prepare(
    pool: &PgPool,
    target: &Target,
    load_mode: crate::maintain::LoadMode,
    result: &crate::backfill::RunResult,
    started: std::time::Instant,
    owner: &str,
) -> anyhow::Result<()> {
    // Start to the last job's end; an ANALYZE still running then counts as preparation.
    let load_phase = started.elapsed() - (result.wall - result.loaded);
    crate::outln!("{}", report::summary(&result.jobs, result.wall));
    crate::outln!("{}", report::stage_breakdown(&result.jobs));
    if target.observer().is_some() {
        // civic-observer's indexes are the application's: nothing to build after a load.
    } else if result.interrupted {
        if let Err(e) = jobs::refresh_stats(pool).await {
            warn!(error = %e, "Could not refresh meeting_page_stats; `civicload maintain` refreshes it.");
        }
    } else {
        let load_mode = crate::maintain::LoadMode {
            pages_analyzed: result.pages_analyzed,
            ..load_mode
        };
        prepare_for_search(pool, load_mode, owner).await?;
        crate::outln!(
            "{}",
            report::phases(&result.jobs, load_phase, started.elapsed())
        );
    }
    Ok(())
}

/// civicload computes search vectors itself once it has read this server's rules (a few
/// seconds, in the background): see stages/src/tsvector.rs. A bulk load waits for them (a
/// vector left to the server costs a second write of the row); other runs start at once
/// and let PostgreSQL compute the first batches' vectors.
/// civicload computes search vectors itself once it has read this server's rules (a few
/// seconds, in the background): see stages/src/tsvector.rs. A bulk load waits for them (a
/// vector left to the server costs a second write of the row); other runs start at once and
/// let PostgreSQL compute the first batches' vectors. civic-observer's G2 has no vector
/// columns; into G1 every batch waits for civicload's vectors, since a batch without them
/// pays the application's trigger per page.
fn read_vector_rules(
    pool: &PgPool,
    args: &BackfillArgs,
    generation: Option<Generation>,
) -> stages::fetch::SharedVectors {
    use stages::tsvector::{Coverage, VectorBuilder};
    // Bounded: batches wait for the rules in a bulk load, so a probe that hangs (its
    // connection stalled) must not hold them; PostgreSQL computes the vectors then.
    const PROBE_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);
    if args.server_vectors || args.verify_only || generation == Some(Generation::G2) {
        return stages::fetch::SharedVectors::none();
    }
    let vectors = stages::fetch::SharedVectors::pending(args.bulk || generation.is_some());
    let shared = vectors.clone();
    let probe_pool = pool.clone();
    let probe = move |coverage| {
        let pool = probe_pool.clone();
        async move {
            match tokio::time::timeout(
                PROBE_LIMIT,
                VectorBuilder::from_server_covering(&pool, coverage),
            )
            .await
            {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!(
                    "reading the rules took over {} s",
                    PROBE_LIMIT.as_secs()
                )),
            }
        }
    };
    // Planes 0 and 1 first (about a second: every script in common use, and the
    // emoji); every assigned code point (several seconds of the server's CPU) only once
    // a text has a rarer one. Such texts get their vectors from PostgreSQL meanwhile.
    tokio::spawn(async move {
        let common = match probe(Coverage::Common).await {
            Ok(v) => Arc::new(v),
            Err(e) => {
                warn!("PostgreSQL computes the search vectors in this run: civicload cannot reproduce this server's exactly ({e}).");
                shared.resolve(None);
                return;
            }
        };
        shared.resolve(Some(common.clone()));
        common.beyond_coverage().await;
        info!("A page has a code point beyond U+1FFFF: reading the server's rules for every assigned code point.");
        match probe(Coverage::Assigned).await {
            Ok(v) => shared.resolve(Some(Arc::new(v))),
            Err(e) => warn!("PostgreSQL computes the search vectors of texts with code points beyond U+1FFFF in this run ({e})."),
        }
    });
    vectors
}

/// The last lines of a backfill and its exit status: what stopped it, or the jobs of this
/// run (by any worker) that are not completed and verified.
async fn end_of_run(pool: &PgPool, ids: &[i64], interrupted: bool) -> anyhow::Result<u8> {
    let rows = jobs::list(pool, Some(ids)).await?;
    let unfinished: Vec<Unfinished> = rows
        .iter()
        .filter(|j| !j.completed_and_verified())
        .map(Unfinished::from)
        .collect();
    if interrupted {
        crate::outln!("Stopped: in-flight batches were committed and unfinished jobs are paused. Run the same command again (or add --resume) to continue from their checkpoints.");
        return Ok(EXIT_INCOMPLETE);
    }
    if unfinished.is_empty() {
        crate::outln!("All {} jobs completed and verified.", rows.len());
        Ok(EXIT_OK)
    } else {
        crate::outln!(
            "{}",
            report::unfinished(&unfinished, rows.len(), "completed and verified")
        );
        crate::outln!(
            "See `civicload status --incomplete`; rerun the same command to continue them."
        );
        Ok(EXIT_INCOMPLETE)
    }
}

/// Whether this bulk load may COPY pages without per-row foreign-key checks (see
/// stages/src/store/integrity.rs); says which way it goes.
async fn fk_checks_skippable(pool: &PgPool) -> bool {
    match stages::store::integrity::may_skip_fk_checks(pool).await {
        Ok(true) => {
            info!("Bulk mode: new pages are written without per-row foreign-key checks (session_replication_role = replica, for the COPY only); one query after the load proves every page's document and municipality exist.");
            true
        }
        Ok(false) => {
            info!(
                "Bulk mode with per-row foreign-key checks: this role may not set session_replication_role. {}.",
                stages::store::integrity::GRANT_HINT
            );
            false
        }
        Err(e) => {
            warn!(error = %e, "Could not tell whether this role may set session_replication_role; keeping the per-row foreign-key checks.");
            false
        }
    }
}

/// Vectors, indexes and statistics after a load, by the last worker to finish: while
/// other processes still load, or one already prepares, this one leaves it to them.
async fn prepare_for_search(
    pool: &PgPool,
    mode: crate::maintain::LoadMode,
    owner: &str,
) -> anyhow::Result<()> {
    let others = jobs::running_elsewhere(pool, owner).await?;
    if others > 0 {
        crate::outln!("{others} jobs are still being loaded by other workers: the last to finish builds the search vectors and indexes (or run `civicload vectorize`, then `civicload maintain`).");
        return Ok(());
    }
    let Some(lease) = Lease::try_acquire(pool, jobs::POST_LOAD_LEASE, owner).await? else {
        crate::outln!("Another civicload process is preparing the database for search; leaving it to that one.");
        return Ok(());
    };
    let result = crate::maintain::after_backfill(pool, mode).await;
    let _ = lease.release().await;
    result
}

async fn verify_only(backfill: &Backfill, ids: &[i64]) -> anyhow::Result<u8> {
    let mut all_verified = true;
    for row in jobs::list(&backfill.pool, Some(ids)).await? {
        let key = row.key();
        let r = stages::reconcile::reconcile(
            &backfill.pool,
            &backfill.client,
            &backfill.target,
            &key,
            None,
        )
        .await?;
        all_verified &= r.verdict == stages::reconcile::Verdict::Verified;
        crate::outln!("{key}: {}", r.describe());
    }
    Ok(if all_verified {
        EXIT_OK
    } else {
        EXIT_INCOMPLETE
    })
}
